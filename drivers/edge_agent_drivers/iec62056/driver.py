"""The `iec62056` driver: one mode C data readout through an optical probe per poll.

The protocol is strictly sequential and slow (the sign-on runs at 300 baud), so the readout
runs on the device's own thread with blocking pyserial calls (BlockingDriver), never on the
event loop. Each poll signs on afresh at the initial rate: a meter falls back to it by itself
after a readout, so the agent does not depend on the meter's inactivity timer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import serial

from edge_agent.sdk import (
    BAD,
    GOOD,
    UNCERTAIN,
    BlockingDriver,
    DeviceDisconnected,
    DeviceTimeout,
    FaultTally,
    PointSpec,
    ProtocolError,
    Reading,
    Sample,
    get_logger,
    now_ms,
    resolve_port,
)
from edge_agent_drivers.iec62056 import codec, obis
from edge_agent_drivers.iec62056.config import Iec62056Device


class Iec62056Driver(BlockingDriver):
    config_model = Iec62056Device

    def __init__(self, config: Iec62056Device) -> None:
        super().__init__(config)
        self.config: Iec62056Device = config
        self.log = get_logger("edge_agent.driver.iec62056", device=config.name)
        #: survived problems by kind (a data line that cannot be read, a unit that does not
        #: convert): the device's error counter, so they reach /metrics by kind
        self.errors: FaultTally = FaultTally(self.log, "iec62056_dropped")
        self._serial: Any = None
        #: normalised code -> (metric, unit) for every code this device publishes by config
        self._named = {codec.normalise_code(p.obis): (p.name, p.unit) for p in config.points}
        self.identification: codec.Identification | None = None

    def points(self) -> list[PointSpec]:
        specs = {p.name: PointSpec(p.name, p.unit or obis.KNOWN.get(
            codec.normalise_code(p.obis), (None, None))[1], p.scale, p.offset)
            for p in self.config.points}
        if self.config.all_codes:
            for name, unit in obis.KNOWN.values():
                specs.setdefault(name, PointSpec(name, unit))
        return list(specs.values())

    # -- I/O, on the device's thread ------------------------------------------------------
    async def connect(self) -> None:
        await self.in_thread(self._open)

    async def close(self) -> None:
        await self.in_thread(self._close)
        await super().close()

    def poll_time_limit(self) -> float:
        """A readout may take its whole `readout_timeout` (300 baud sign-on, long data set)."""
        return max(super().poll_time_limit(), self.config.readout_timeout + self.config.timeout)

    async def poll(self) -> Sample:
        sets, ts = await self.in_thread(self._readout)
        return Sample(ts, self._readings(sets))

    def _open(self) -> None:
        path = resolve_port(self.config.port or "")
        try:
            self._serial = serial.serial_for_url(
                path, baudrate=self.config.baudrate, bytesize=self.config.bytesize,
                parity=self.config.parity, stopbits=self.config.stopbits,
                timeout=min(self.config.timeout, 0.2))
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceDisconnected(f"cannot open {path}: {exc}") from None

    def _close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()

    def _readout(self) -> tuple[list[codec.DataSet], int]:
        ser = self._serial
        if ser is None:
            raise DeviceDisconnected("not connected")
        config = self.config
        deadline = time.monotonic() + config.readout_timeout
        try:
            if ser.baudrate != config.baudrate:  # pyserial re-applying a rate fails on a pty
                ser.baudrate = config.baudrate
            ser.reset_input_buffer()
            ser.write(codec.sign_on(config.address))
            ser.flush()
            ident = codec.parse_identification(self._read_line(ser, deadline))
            self.identification = ident
            rate = min(ident.max_baudrate, config.max_baudrate)
            ser.write(codec.option_select(rate))
            ser.flush()  # the ACK leaves at the old rate before the port switches
            if rate != ser.baudrate:
                ser.baudrate = rate
            message = self._read_message(ser, deadline)
            ts = now_ms()
        except codec.FrameError as exc:
            raise ProtocolError(str(exc)) from None
        except (serial.SerialException, OSError) as exc:
            raise DeviceDisconnected(f"{config.port}: {exc}") from None
        try:
            return codec.parse_readout(message), ts
        except codec.FrameError as exc:
            if exc.kind == "line":  # one bad line: the rest of the readout is still good
                return self._lenient(message), ts
            raise ProtocolError(str(exc)) from None

    def _read_line(self, ser: Any, deadline: float) -> bytes:
        return self._read_until(ser, deadline, lambda got: got.endswith(b"\n"),
                                codec.MAX_IDENT, "identification message", one_byte=True)

    def _read_message(self, ser: Any, deadline: float) -> bytes:
        return self._read_until(ser, deadline, codec.readout_complete, codec.MAX_READOUT,
                                "data readout")

    def _read_until(self, ser: Any, deadline: float, complete: Callable[[bytearray], bool],
                    limit: int, what: str, *, one_byte: bool = False) -> bytes:
        """Reads until `complete`, allowing `timeout` of silence and `deadline` in all.

        The identification is read a byte at a time: nothing after its line feed may be taken
        from the port before the rate switches."""
        got = bytearray()
        silent_until = time.monotonic() + self.config.timeout
        while not complete(got):
            now = time.monotonic()
            if now > deadline or now > silent_until:
                raise DeviceTimeout(f"{what} cut short: {bytes(got[:40])!r}" if got
                                    else f"no {what} from the meter")
            chunk = ser.read(1 if one_byte else max(1, min(ser.in_waiting, 4096)))
            if chunk:
                got += chunk
                silent_until = now + self.config.timeout
                if len(got) > limit:
                    raise ProtocolError(f"{what} longer than {limit} bytes")
        return bytes(got)

    def _lenient(self, message: bytes) -> list[codec.DataSet]:
        """The data sets of a message whose BCC is right but with lines that do not parse."""
        start, end = message.find(codec.STX), message.find(codec.ETX)
        sets = []
        for raw in message[start + 1:end].decode("ascii", "replace").splitlines():
            line = raw.strip()
            if not line or line == "!":
                continue
            try:
                sets.append(codec.parse_line(line))
            except codec.FrameError as exc:
                self.errors.record("line", str(exc), line)
        return sets

    # -- decoding, on the event loop ------------------------------------------------------
    def _readings(self, sets: list[codec.DataSet]) -> list[Reading]:
        readings: list[Reading] = []
        seen: set[str] = set()
        for data in sets:
            named = self._named.get(data.code)
            if named is not None:
                metric, unit = named
            elif self.config.all_codes:
                metric, unit = obis.KNOWN.get(data.code, (obis.default_name(data.code), None))
            else:
                continue
            if metric in seen:
                continue
            seen.add(metric)
            readings.append(self._reading(metric, unit, data))
        return readings

    def _reading(self, metric: str, unit: str | None, data: codec.DataSet) -> Reading:
        value = data.value if data.code in obis.TEXT else codec.typed_value(data.value)
        if isinstance(value, str):
            return Reading(metric, value, GOOD if unit is None else BAD)
        sent_unit, factor = codec.ucum(data.unit)
        if unit is None or sent_unit is None:
            return Reading(metric, value * factor, GOOD)
        converted = codec.convert(value * factor, sent_unit, unit)
        if converted is None:
            self.errors.record("unit", f"{data.code}: the meter sent {data.unit}, "
                                       f"expected {unit}")
            return Reading(metric, value, UNCERTAIN)
        return Reading(metric, converted, GOOD)
