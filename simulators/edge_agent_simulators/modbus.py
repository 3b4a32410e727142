"""Simulated Modbus devices: TCP on a socket, RTU or ASCII on a pseudo-terminal.

The device side reuses pymodbus's framers and PDU classes (the same codec the client uses),
with a register bank of our own that counts requests and injects faults, so tests can check
the agent's request plan and its handling of broken devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerAscii, FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.mei_message import ReadDeviceInformationRequest, ReadDeviceInformationResponse

from edge_agent.decode import encode_value, register_count
from edge_agent_simulators.pty import Pty
from edge_agent_simulators.waves import Wave

_FUNCTION_TABLES = {1: "coil", 5: "coil", 15: "coil", 2: "discrete",
                    3: "holding", 6: "holding", 16: "holding", 23: "holding", 4: "input"}


@dataclass
class Faults:
    """Per-unit fault injection. Rates are probabilities per request (0..1).

    All of it can be changed while the simulator runs (tests flip faults on and off).
    """

    no_response: float = 0.0  # say nothing, as a dead or unplugged unit does
    crc_error: float = 0.0  # answer with a corrupted check (CRC for RTU, LRC for ASCII)
    exception: int | None = None  # answer this exception code...
    exception_rate: float = 1.0  # ...to this share of requests...
    exception_count: int | None = None  # ...this many times (None: for ever)
    delay: float = 0.0  # seconds before answering (answers late once above the timeout)
    max_registers: int | None = None  # longer reads get exception 03 (illegal data value)
    sparse: bool = False  # reads touching an address no register covers get exception 02

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Faults:
        try:
            return cls(**(spec or {}))
        except TypeError as exc:  # an unknown key: say which keys there are
            keys = ", ".join(cls.__dataclass_fields__)
            raise ValueError(f"faults: {exc}; known keys: {keys}") from None


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
    #: every request the unit received, answered or not: (function code, address, count)
    requests: Counter[tuple[int, int, int]] = field(default_factory=Counter)
    #: what it did about them: "answered", "silent", "crc_error", "exception_XX", "late"
    outcomes: Counter[str] = field(default_factory=Counter)
    written: dict[int, int] = field(default_factory=dict)  # address -> last value written
    pinned: set[tuple[str, int]] = field(default_factory=set)  # (table, address) written
    #: Read Device Identification (43/14) objects by id (0 VendorName, 1 ProductCode,
    #: 2 MajorMinorRevision, 4 ProductName...); None: the unit refuses function 43 (01)
    identification: dict[int, str] | None = None

    def refresh(self) -> None:
        for reg in self.registers:
            if (reg.table, reg.address) in self.pinned:
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

    def mapped(self, table: str, address: int, count: int) -> bool:
        """Whether every address of a read is covered by a declared register."""
        covered = set()
        for reg in self.registers:
            if reg.table == table:
                size = 1 if table in ("coil", "discrete") else register_count(reg.type,
                                                                              reg.length)
                covered.update(range(reg.address, reg.address + size))
        return all(a in covered for a in range(address, address + count))


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
            faults = unit.faults
            if faults.max_registers and count > faults.max_registers:
                return ExcCodes.ILLEGAL_VALUE
            if faults.sparse and not unit.mapped(table, address, count):
                return ExcCodes.ILLEGAL_ADDRESS
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
                unit.pinned.add(("coil", address + i))
        elif table == "holding":
            for i, word in enumerate(values):
                unit.words["holding"][address + i] = int(word)
                unit.written[address + i] = int(word)
                unit.pinned.add(("holding", address + i))
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        return None


Send = Callable[[bytes], None]


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

    async def answer(self, framer: Any, buffer: bytearray, send: Send) -> None:
        """Consumes complete frames from `buffer` and sends each unit's answer.

        A slow unit's answer is sent later by a timer, so it does not hold up the others,
        and arrives late (perhaps in the middle of another exchange) as a real one would.
        """
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
                continue  # no such unit on the line (or a broadcast): silence
            reply = await self._reply(framer, unit, pdu)
            if reply is None:
                continue
            if unit.faults.delay:
                asyncio.get_running_loop().call_later(unit.faults.delay, send, reply)
            else:
                send(reply)

    async def _reply(self, framer: Any, unit: Unit, pdu: Any) -> bytes | None:
        faults, rng = unit.faults, self.rng
        count = 1 if pdu.function_code in (5, 6) else getattr(pdu, "count", 0)
        unit.requests[(pdu.function_code, getattr(pdu, "address", 0), count)] += 1
        if faults.no_response and rng.random() < faults.no_response:
            unit.outcomes["silent"] += 1
            return None
        if (faults.exception and faults.exception_count != 0
                and rng.random() < faults.exception_rate):
            if faults.exception_count is not None:
                faults.exception_count -= 1
            response: Any = ExceptionResponse(pdu.function_code, faults.exception)
        elif isinstance(pdu, ReadDeviceInformationRequest):
            response = _identify(unit, pdu)
        else:
            response = await pdu.datastore_update(self.context, pdu.dev_id)
        response.dev_id, response.transaction_id = pdu.dev_id, pdu.transaction_id
        if response.isError():
            unit.outcomes[f"exception_{response.exception_code:02X}"] += 1
        frame = framer.buildFrame(response)
        if faults.crc_error and rng.random() < faults.crc_error:
            unit.outcomes["crc_error"] += 1
            frame = _corrupt_check(frame, self.framing)
        else:
            unit.outcomes["answered"] += 1
        if faults.delay:
            unit.outcomes["late"] += 1
        return frame

    # -- transports ----------------------------------------------------------------------
    async def serve_tcp(self, host: str, port: int) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            framer, buffer = self._framer(), bytearray()

            def send(frame: bytes) -> None:
                if not writer.is_closing():
                    writer.write(frame)
            try:
                while data := await reader.read(4096):
                    buffer += data
                    await self.answer(framer, buffer, send)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                # at shutdown the loop may already be closed when this coroutine is collected
                with contextlib.suppress(RuntimeError):
                    writer.close()

        return await asyncio.start_server(handle, host, port)

    def serve_pty(self) -> PtyEndpoint:
        return PtyEndpoint(self)


def _identify(unit: Unit, pdu: ReadDeviceInformationRequest) -> Any:
    """This unit's own identification (pymodbus's server answers one global identity)."""
    if unit.identification is None:
        return ExceptionResponse(pdu.function_code, ExcCodes.ILLEGAL_FUNCTION)
    basic = pdu.read_code in (1, 4)  # basic stream, or one object: 0..2 only
    objects = {oid: text.encode("ascii") for oid, text in sorted(unit.identification.items())
               if not basic or oid <= 2}
    if pdu.read_code == 4:
        if pdu.object_id not in objects:
            return ExceptionResponse(pdu.function_code, ExcCodes.ILLEGAL_ADDRESS)
        objects = {pdu.object_id: objects[pdu.object_id]}
    return ReadDeviceInformationResponse(read_code=pdu.read_code, information=objects)


def _corrupt_check(frame: bytes, framing: str) -> bytes:
    """The frame with a wrong check, still complete: RTU's CRC or ASCII's LRC is off."""
    if framing == "ascii":  # ':' hex... LRC(2 hex) CR LF
        digit = frame[-3:-2]
        return frame[:-3] + (b"1" if digit == b"0" else b"0") + frame[-2:]
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


class PtyEndpoint(Pty):
    """A pseudo-terminal whose slave side is the 'serial port' a driver opens.

    It records the silence the master kept before each request (time from our last answer
    to the request's first byte), so tests can check the inter-frame gap a driver keeps.
    """

    def __init__(self, simulator: ModbusSimulator) -> None:
        super().__init__(self._received)
        self.simulator = simulator
        self._framer = simulator._framer()
        self._buffer = bytearray()
        self._last_sent = 0.0
        self.silences: deque[float] = deque(maxlen=1000)
        self._draining: asyncio.Task[None] | None = None

    def _received(self, data: bytes) -> None:
        if not self._buffer and self._last_sent:
            self.silences.append(time.monotonic() - self._last_sent)
        self._buffer += data
        if self._draining is None:  # one consumer at a time, in arrival order
            self._draining = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self.simulator.answer(self._framer, self._buffer, self._send)
        finally:
            self._draining = None

    def _send(self, frame: bytes) -> None:
        if self.write(frame):
            self._last_sent = time.monotonic()
