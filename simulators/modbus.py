"""Simulated Modbus devices: TCP on a socket, RTU or ASCII on a pseudo-terminal.

The device side reuses pymodbus's framers and PDU classes (the same codec the client uses),
with a register bank of our own that counts requests and injects faults, so tests can check
the agent's request plan and its handling of broken devices.
"""

from __future__ import annotations

import asyncio
import os
import random
import tty
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edge_agent_simulators.waves import Wave
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerAscii, FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU

from edge_agent.decode import encode_value, register_count

_FUNCTION_TABLES = {1: "coil", 5: "coil", 15: "coil", 2: "discrete",
                    3: "holding", 6: "holding", 16: "holding", 23: "holding", 4: "input"}


@dataclass
class Faults:
    """Per-unit fault injection; probabilities are per request."""

    no_response: float = 0.0
    crc_error: float = 0.0
    exception: int | None = None  # exception code to answer with...
    exception_rate: float = 0.0  # ...with this probability
    delay: float = 0.0  # seconds before answering
    max_registers: int | None = None  # answer 03 (illegal value) to longer reads

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Faults:
        return cls(**(spec or {}))


@dataclass
class Register:
    table: str
    address: int
    type: str
    order: str
    wave: Wave
    length: int = 1


@dataclass
class Unit:
    """One Modbus unit (slave): its tables, its moving values, what it was asked."""

    unit_id: int
    registers: list[Register] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    words: dict[str, dict[int, int]] = field(default_factory=lambda: {"holding": {}, "input": {}})
    bits: dict[str, dict[int, bool]] = field(default_factory=lambda: {"coil": {}, "discrete": {}})
    requests: Counter[tuple[int, int, int]] = field(default_factory=Counter)  # (fc, addr, count)
    written: dict[int, int] = field(default_factory=dict)

    def refresh(self) -> None:
        for reg in self.registers:
            if reg.address in self.written and reg.table in ("holding", "coil"):
                continue  # a value the agent wrote stays until rewritten
            value = reg.wave.value()
            if reg.table in ("coil", "discrete"):
                self.bits[reg.table][reg.address] = bool(value)
                continue
            self.set_value(reg.table, reg.address, value, reg.type, reg.order, reg.length)

    def set_value(self, table: str, address: int, value: Any, type_name: str,
                  order: str = "ABCD", length: int = 1) -> None:
        if type_name not in ("float32", "float64", "string", "bool"):
            value = int(value) & ((1 << (16 * register_count(type_name))) - 1)
            value = _signed(value, type_name)
        data = encode_value(value, type_name, order, length)
        for i in range(0, len(data), 2):
            self.words[table][address + i // 2] = int.from_bytes(data[i:i + 2], "big")


def _signed(value: int, type_name: str) -> int:
    bits = {"int16": 16, "int32": 32, "int64": 64}.get(type_name)
    if bits and value >= 1 << (bits - 1):
        return value - (1 << bits)
    return value


class Context:
    """The datastore interface pymodbus PDUs call (`async_getValues`/`async_setValues`)."""

    def __init__(self, units: dict[int, Unit]) -> None:
        self.units = units

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[Any] | ExcCodes:
        unit = self.units[device_id]
        table = _FUNCTION_TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if func_code in (1, 2, 3, 4):
            unit.requests[(func_code, address, count)] += 1
            if unit.faults.max_registers and count > unit.faults.max_registers:
                return ExcCodes.ILLEGAL_VALUE
        unit.refresh()
        if table in ("coil", "discrete"):
            store = unit.bits[table]
            return [store.get(a, False) for a in range(address, address + count)]
        words = unit.words[table]
        return [words.get(a, 0) for a in range(address, address + count)]

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: list[Any]) -> ExcCodes | None:
        unit = self.units[device_id]
        table = _FUNCTION_TABLES.get(func_code)
        if table == "coil":
            for i, bit in enumerate(values):
                unit.bits["coil"][address + i] = bool(bit)
                unit.written[address + i] = int(bool(bit))
        elif table == "holding":
            for i, word in enumerate(values):
                unit.words["holding"][address + i] = int(word)
                unit.written[address + i] = int(word)
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        return None


class ModbusSimulator:
    """Answers Modbus requests for a set of units over one byte stream."""

    def __init__(self, units: dict[int, Unit], framing: str) -> None:
        self.units = units
        self.context = Context(units)
        self.framing = framing
        self.rng = random.Random(7)

    def _framer(self) -> Any:
        framers = {"socket": FramerSocket, "rtu": FramerRTU, "ascii": FramerAscii}
        return framers[self.framing](DecodePDU(is_server=True))

    async def answer(self, framer: Any, buffer: bytearray) -> list[bytes]:
        """Consumes complete frames from `buffer`; returns the frames to send back."""
        replies = []
        while buffer:
            try:
                used, pdu = framer.handleFrame(bytes(buffer), 0, 0)
            except Exception:  # undecodable request: drop the buffer, as a device would
                buffer.clear()
                break
            if not used:
                break
            del buffer[:used]
            if pdu is None:
                continue
            unit = self.units.get(pdu.dev_id)
            if unit is None:
                continue  # no such unit on the line: silence, like real hardware
            reply = await self._reply(framer, unit, pdu)
            if reply is not None:
                replies.append(reply)
        return replies

    async def _reply(self, framer: Any, unit: Unit, pdu: Any) -> bytes | None:
        faults = unit.faults
        if faults.delay:
            await asyncio.sleep(faults.delay)
        if faults.no_response and self.rng.random() < faults.no_response:
            unit.requests[(pdu.function_code, -1, -1)] += 1
            return None
        if faults.exception and self.rng.random() < (faults.exception_rate or 1.0):
            from pymodbus.pdu import ExceptionResponse

            response = ExceptionResponse(pdu.function_code, faults.exception)
        else:
            response = await pdu.datastore_update(self.context, pdu.dev_id)
        response.dev_id, response.transaction_id = pdu.dev_id, pdu.transaction_id
        frame = framer.buildFrame(response)
        if faults.crc_error and self.rng.random() < faults.crc_error:
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        return frame

    # -- transports ----------------------------------------------------------------------
    async def serve_tcp(self, host: str, port: int) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            framer, buffer = self._framer(), bytearray()
            try:
                while data := await reader.read(4096):
                    buffer += data
                    for reply in await self.answer(framer, buffer):
                        writer.write(reply)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        return await asyncio.start_server(handle, host, port)

    def serve_pty(self) -> PtyEndpoint:
        return PtyEndpoint(self)


class PtyEndpoint:
    """A pseudo-terminal whose slave side is the 'serial port' a driver opens."""

    def __init__(self, simulator: ModbusSimulator) -> None:
        self.simulator = simulator
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)
        self._framer = simulator._framer()
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        self._buffer += data
        self._loop.create_task(self._answer())

    async def _answer(self) -> None:
        for reply in await self.simulator.answer(self._framer, self._buffer):
            os.write(self.master, reply)

    def close(self) -> None:
        self._loop.remove_reader(self.master)
        os.close(self.master)
        os.close(self._slave)
