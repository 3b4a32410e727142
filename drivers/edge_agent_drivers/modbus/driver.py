"""The Modbus driver: sequences one unit's requests for its read plan over a shared `Bus`.

What a poll promises:
- every point gets a reading; a block the unit refused or did not answer yields `bad`
  readings for its points while the other blocks still publish good values, and the cause
  is counted in `errors` (exported per device by the runtime);
- a unit that answers nothing at all in a poll makes the poll fail (DeviceTimeout or
  ProtocolError), so the runtime marks the device and reconnects with backoff;
- an answer that is not the answer to its request (another function code, more or fewer
  registers than asked: `answers.mismatch`) is a protocol error: the block is bad, counted
  as `protocol`, not retried, and the poll goes on;
- exception 02/03 on a multi-point block splits the block and remembers the narrower
  layout; 06 (busy) is retried with backoff; other codes mark the block bad;
- a unit that did not answer its last request gets a single attempt, no retries, and the
  rest of that poll is not asked for: a dead unit costs its neighbours one timeout per poll;
  and since `connect()` asks the unit itself, a dead unit fails to reconnect and the
  runtime's backoff spaces out its attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from edge_agent.sdk import (
    DeviceDisconnected,
    DeviceError,
    Discovered,
    Driver,
    ProtocolError,
    Reading,
    Sample,
    WriteRefused,
    encode_value,
    get_logger,
    now_ms,
)
from edge_agent_drivers.modbus.adjust import Adjuster
from edge_agent_drivers.modbus.answers import WrongAnswer
from edge_agent_drivers.modbus.bus import Bus, ExceptionResponse, refused
from edge_agent_drivers.modbus.codec import BlockDecoder
from edge_agent_drivers.modbus.config import ModbusDevice, ModbusPoint
from edge_agent_drivers.modbus.plan import Block, plan, split

#: first wait before asking a busy (06) unit again; doubles per retry, capped at the timeout
BUSY_BACKOFF = 0.05
_SPLIT_CODES = (ExceptionResponse.ILLEGAL_ADDRESS, ExceptionResponse.ILLEGAL_VALUE)

# Kept under its old name for code that caught it.
ModbusException_ = ExceptionResponse

_READS = {"holding": ReadHoldingRegistersRequest, "input": ReadInputRegistersRequest,
          "coil": ReadCoilsRequest, "discrete": ReadDiscreteInputsRequest}


def read_request(block: Block, unit: int, count: int | None = None) -> ModbusPDU:
    """The read request for a block (pymodbus's PDU class for its table)."""
    return _READS[block.table](address=block.address, count=count or block.count,
                               dev_id=unit)


class ModbusDriver(Driver):
    config_model = ModbusDevice
    shares_port = True

    def __init__(self, config: ModbusDevice) -> None:
        super().__init__(config)
        self.config: ModbusDevice = config
        self.blocks = [BlockDecoder(b) for b in plan(
            config.points, config.max_registers, config.max_bits, config.gap_registers)]
        self._points = {p.name: p for p in config.points}
        adjuster = Adjuster(config.points)  # "not available" markers, SunSpec scale factors
        self._adjust = adjuster.apply if adjuster.needed else None
        self._bus: Bus | None = None
        self._answering = False  # the unit answered its last request: silences get retried
        self._silent: DeviceError | None = None  # why the unit stopped answering this poll
        self._reads: dict[BlockDecoder, ModbusPDU] = {}  # each block's request, made once
        self.log = get_logger("edge_agent.modbus", device=config.name)

    @classmethod
    def discover(cls, port: str, **options: Any) -> list[Discovered]:
        """`edge-agent scan --modbus PORT`: the units that answer, read only (discover.py).

        Options: `units` (ids), `timeout` (s per request), `unit_time` (s per unit),
        `serial` (baudrate, parity, stopbits), `profiles` (the profiles' match rules)."""
        from edge_agent_drivers.modbus import discover

        return discover.discover(port, units=list(options.get("units") or range(1, 248)),
                                 timeout=float(options.get("timeout", 0.3)),
                                 unit_time=float(options.get("unit_time", 3.0)),
                                 serial=options.get("serial"), profiles=options.get("profiles"))

    async def connect(self) -> None:
        """Opens (or joins) the port's bus, then checks that this unit answers.

        On a shared line the port is usually open already, so "connected" has to mean the
        unit itself answers: a dead unit then fails to connect, and the runtime's growing
        reconnect backoff keeps it off the line instead of letting it spend one timeout of
        its neighbours' time on every poll.
        """
        if self._bus is None:
            self._bus = Bus.attach(self.config)
        bus = self._bus
        await bus.ensure_connected()
        # a refusal is an answer too: the unit is there (the poll says which points are bad)
        with contextlib.suppress(ExceptionResponse):
            await self._request(bus, read_request(self.blocks[0].block, self.config.unit, 1))

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.detach()
            self._bus = None

    # -- reading ---------------------------------------------------------------------------
    async def poll(self) -> Sample:
        bus = self._bus
        if bus is None or not bus.connected:
            raise DeviceDisconnected("not connected")
        self._silent = None
        readings: list[Reading] = []
        layout: list[BlockDecoder] = []
        ts = 0
        for decoder in self.blocks:
            # the common case of `_read` inlined (a coroutine fewer per block and poll): the
            # block answered; anything else, and a unit already silent, goes through `_read`
            request = self._reads.get(decoder)
            if request is None or self._silent is not None:
                layout += await self._read(bus, decoder, readings)
            else:
                try:
                    response = await self._request(bus, request)
                except DeviceError as exc:
                    layout += await self._failed(bus, decoder, exc, readings)
                else:
                    readings += self._values(decoder, response)
                    layout.append(decoder)
            if not ts and self._silent is None:
                ts = now_ms()  # the first answer: when this sample was read
        if not ts:
            raise self._silent or DeviceError("no answer")  # nothing answered at all
        if self._silent is not None:
            self.errors[self._silent.kind] += 1
        if len(layout) != len(self.blocks):
            self.blocks = layout
        return Sample(ts, self._adjust(readings) if self._adjust else readings)

    async def _read(self, bus: Bus, decoder: BlockDecoder,
                    readings: list[Reading]) -> list[BlockDecoder]:
        """Reads one block into `readings`; returns the block(s) to use from now on."""
        if self._silent is not None:
            readings += decoder.failed()
            return [decoder]
        request = self._reads.get(decoder)
        if request is None:  # made once per block: the same PDU is sent at every poll
            request = self._reads[decoder] = read_request(decoder.block, self.config.unit)
        try:
            response = await self._request(bus, request)
        except DeviceError as exc:
            return await self._failed(bus, decoder, exc, readings)
        readings += self._values(decoder, response)
        return [decoder]

    @staticmethod
    def _values(decoder: BlockDecoder, response: ModbusPDU) -> list[Reading]:
        # the bus checked that the answer holds exactly what was asked (answers.mismatch)
        if decoder.block.is_bits:
            return decoder.decode(response.bits)
        return decoder.decode(response.registers, getattr(response, "data", None))

    async def _failed(self, bus: Bus, decoder: BlockDecoder, error: DeviceError,
                      readings: list[Reading]) -> list[BlockDecoder]:
        """A block whose read failed with `error`: its points bad, or the block split.
        Returns the block(s) to use from now on."""
        block = decoder.block
        if isinstance(error, DeviceDisconnected):
            raise error
        if isinstance(error, ExceptionResponse):
            self.errors[error.kind] += 1
            parts = split(block) if error.code in _SPLIT_CODES else [block]
            if len(parts) > 1:
                self.log.warning("read_split", table=block.table, address=block.address,
                                 count=block.count, code=error.kind,
                                 into=[(p.address, p.count) for p in parts])
                layout = []
                for part in parts:
                    layout += await self._read(bus, BlockDecoder(part), readings)
                return layout
        elif isinstance(error, WrongAnswer):  # the unit answered, but not this request
            self.errors[error.kind] += 1
            self.log.warning("wrong_answer", error=str(error))
        else:  # no (valid) answer: the unit is silent for this poll
            self._silent = error
        readings += decoder.failed()
        return [decoder]

    async def _request(self, bus: Bus, request: ModbusPDU) -> ModbusPDU:
        """One request with this unit's timeout and retries.

        A silence is retried only while the unit is known to answer, so a unit that has
        gone quiet costs one timeout, not (retries + 1). Busy (06) is retried with backoff.
        Every failed attempt that is retried is counted here; the last one is the caller's.
        """
        config = self.config
        timeout = config.timeout
        left = config.retries
        busy_wait = BUSY_BACKOFF
        while True:
            try:
                response = await bus.call(request, timeout)
                refused(response, request)
            except ExceptionResponse as exc:
                self._answering = True
                if exc.code != ExceptionResponse.BUSY or left <= 0:
                    raise
                left -= 1
                self.errors[exc.kind] += 1
                await asyncio.sleep(min(busy_wait, timeout))  # off the bus: others go on
                busy_wait *= 2
                continue
            except WrongAnswer:  # it answers, out of step: asking again would not help
                self._answering = True
                raise
            except DeviceDisconnected:
                raise
            except DeviceError as exc:
                heard = isinstance(exc, ProtocolError)  # a garbled answer: someone is there
                if not (heard or self._answering) or left <= 0:
                    self._answering = heard
                    raise
                left -= 1
                self.errors[exc.kind] += 1
                continue
            self._answering = True
            return response

    # -- writing (downlink) ----------------------------------------------------------------
    async def write(self, metric: str, value: Any) -> None:
        """Writes a raw value: coils with FC05, one register with FC06, more with FC16.

        A bool taken from one bit of a holding register is written by reading the register
        and writing it back with only that bit changed.
        """
        point: ModbusPoint | None = self._points.get(metric)
        if point is None or not point.writable:
            raise WriteRefused(f"point '{metric}' is not writable")
        if point.table not in ("holding", "coil"):
            raise WriteRefused(f"table '{point.table}' is read-only in Modbus")
        bus = self._bus
        if bus is None or not bus.connected:
            raise DeviceDisconnected("not connected")
        unit, address = self.config.unit, point.address
        if point.table == "coil":
            await self._request(bus, WriteSingleCoilRequest(address=address, bits=[bool(value)],
                                                            dev_id=unit))
            return
        if point.type == "bool" and point.bit is not None:
            response = await self._request(bus, ReadHoldingRegistersRequest(
                address=address, count=1, dev_id=unit))
            mask = 1 << point.bit
            word = response.registers[0]
            word = word | mask if value else word & ~mask
            await self._request(bus, WriteSingleRegisterRequest(address=address, registers=[word],
                                                                dev_id=unit))
            return
        words = _words(value, point)
        if len(words) == 1:
            request: ModbusPDU = WriteSingleRegisterRequest(address=address, registers=words,
                                                            dev_id=unit)
        else:
            request = WriteMultipleRegistersRequest(address=address, registers=words,
                                                    dev_id=unit)
        await self._request(bus, request)


def _words(value: Any, point: ModbusPoint) -> list[int]:
    """The register words that hold `value` as the point's type and order."""
    try:
        data = encode_value(value, point.type, point.order, point.length)
    except (struct.error, TypeError, ValueError, OverflowError) as exc:
        raise WriteRefused(f"{value!r} does not fit point '{point.name}' ({point.type}): "
                           f"{exc}") from None
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
