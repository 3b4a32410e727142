"""The `mbus` driver: a meter on a wired M-Bus line, read with REQ_UD2 through a serial master.

A readout selects the meter (SND_NKE to its primary address, or a secondary-address select by
identification number), then requests class 2 data, toggling the frame count bit for each
further telegram while the meter says more records follow. An unanswered or garbled request is
repeated with the same FCB (so the meter repeats, not advances). The line is shared: the
readout holds the line (see line.py). Everything blocks on the device's thread.

The names of a meter's records are learned from its first readout at connect (records.py
names them stably), so the core knows every metric's unit before the first sample.
"""

from __future__ import annotations

from typing import Any

from edge_agent.sdk import (
    BAD,
    GOOD,
    BlockingDriver,
    DeviceError,
    Discovered,
    FaultTally,
    PointSpec,
    ProtocolError,
    Reading,
    Sample,
    get_logger,
    now_ms,
)
from edge_agent_drivers.mbus import frames, line, records, scan
from edge_agent_drivers.mbus.config import MbusDevice


class MbusDriver(BlockingDriver):
    config_model = MbusDevice
    shares_port = True
    learns_points = True

    def __init__(self, config: MbusDevice) -> None:
        super().__init__(config)
        self.config: MbusDevice = config
        self.log = get_logger("edge_agent.driver.mbus", device=config.name)
        self.errors: FaultTally = FaultTally(self.log, "mbus_fault")
        self._line: line.MbusLine | None = None
        self._renamed = {p.record: p for p in config.points}
        self._units: dict[str, str | None] = {}  # record name -> unit, as learned
        self._first: Sample | None = None
        self.identification: str | None = None

    def points(self) -> list[PointSpec]:
        specs: dict[str, PointSpec] = {}
        for point in self.config.points:
            specs[point.name] = PointSpec(point.name, point.unit or self._units.get(point.record),
                                          point.scale, point.offset)
        if self.config.all_records:
            for record, unit in self._units.items():
                if record not in self._renamed:
                    specs.setdefault(record, PointSpec(record, unit))
        return list(specs.values())

    async def connect(self) -> None:
        await self.in_thread(self._connect)

    async def close(self) -> None:
        await self.in_thread(self._release)
        await super().close()

    async def poll(self) -> Sample:
        first, self._first = self._first, None
        if first is not None:  # the readout connect took: a meter's battery is precious
            return first
        return await self.in_thread(self._sample)

    @classmethod
    def discover(cls, port: str, **options: Any) -> list[Discovered]:
        """`edge-agent scan --mbus PORT [--secondary]`: the meters on the line, read only."""
        secondary = bool(options.get("secondary", False))
        found = discover(port, secondary=secondary,
                         baudrate=int(options.get("baudrate") or 2400))
        out = []
        for meter in found:
            if meter.identification == "collision":
                out.append(Discovered(f"primary {meter.address}: several meters answer "
                                      "(search with --secondary)", {}))
                continue
            where = (f"primary {meter.address}" if meter.address is not None
                     else f"secondary {meter.identification}")
            config: dict[str, Any] = {"name": f"meter-{meter.identification}",
                                      "driver": "mbus", "port": port}
            if meter.address is not None:
                config["address"] = meter.address
            else:
                config["secondary"] = meter.identification
            out.append(Discovered(f"{where}: id {meter.identification}, manufacturer "
                                  f"{meter.manufacturer}, medium {meter.medium:#04x}", config))
        return out

    # -- on the device's thread ---------------------------------------------------------------
    def _connect(self) -> None:
        config = self.config
        self._line = line.acquire(config.port, {
            "baudrate": config.baudrate, "bytesize": config.bytesize, "parity": config.parity,
            "stopbits": config.stopbits})
        try:
            sample = self._sample()
        except Exception:
            self._release()
            raise
        self._first = sample

    def _release(self) -> None:
        held, self._line = self._line, None
        if held is not None:
            line.release(held)

    def _sample(self) -> Sample:
        telegrams = self._readout()
        ts = now_ms()
        readings = []
        for telegram in telegrams:
            for record in telegram.records:
                self._units.setdefault(record.name, record.unit)
                quality = GOOD if record.value is not None else BAD
                point = self._renamed.get(record.name)
                if point is not None:
                    readings.append(Reading(point.name, record.value, quality))
                elif self.config.all_records:
                    readings.append(Reading(record.name, record.value, quality))
        return Sample(ts, readings)

    def _readout(self) -> list[records.Telegram]:
        held = self._line
        if held is None:
            raise DeviceError("not connected")
        config = self.config
        with held.lock:
            if config.secondary is not None:
                self._ask(held, frames.select(config.secondary), "ack")
                address = frames.SELECTED
            else:
                address = config.address  # type: ignore[assignment]
                self._ask(held, frames.snd_nke(address), "ack")
            telegrams: list[records.Telegram] = []
            fcb = True
            try:
                for _ in range(config.max_telegrams):
                    answer = self._ask(held, frames.req_ud2(address, fcb), "long")
                    telegram = self._decode(answer, address)
                    telegrams.append(telegram)
                    if not telegram.more_follow:
                        break
                    fcb = not fcb
                else:
                    self.errors.record("telegrams", f"more than {config.max_telegrams} "
                                                    "telegrams: the rest is not read")
            finally:
                if config.secondary is not None:  # deselect, so the next select is clean
                    held.send(frames.snd_nke(frames.SELECTED))
        return telegrams

    def _ask(self, held: line.MbusLine, request: bytes, expect: str) -> frames.Frame:
        last: Exception | None = None
        for _ in range(self.config.retries + 1):
            try:
                return held.exchange(request, self.config.timeout, expect=expect,
                                     on_fault=self.errors.record)
            except DeviceError as exc:
                if exc.kind not in ("timeout", "protocol"):
                    raise
                last = exc
        assert last is not None
        raise last

    def _decode(self, answer: frames.Frame, address: int) -> records.Telegram:
        if answer.ci not in frames.CI_RESPONSES:
            raise ProtocolError(f"not a variable data response (CI {answer.ci:#04x})")
        if self.config.secondary is None and answer.address != address:
            raise ProtocolError(f"answer from address {answer.address}, asked {address}")
        try:
            telegram = records.decode(answer, manufacturer_data=self.config.manufacturer_data)
        except frames.FrameError as exc:
            self.errors.record(exc.kind, str(exc))
            raise ProtocolError(str(exc)) from None
        if self.config.secondary is not None and telegram.identification != self.config.secondary:
            raise ProtocolError(f"answer from meter {telegram.identification}, "
                                f"selected {self.config.secondary}")
        self.identification = telegram.identification
        return telegram


def discover(port: str, *, secondary: bool = False, addresses: range = range(0, 251),
             timeout: float = 0.3, baudrate: int = 2400, parity: str = "E") -> list[scan.Found]:
    """The meters on the line at `port` (read only): `edge-agent scan --mbus PORT`."""
    held = line.acquire(port, {"baudrate": baudrate, "bytesize": 8, "parity": parity,
                               "stopbits": 1})
    try:
        with held.lock:
            if secondary:
                return list(scan.secondary_search(held, timeout))
            return list(scan.primary_sweep(held, addresses, timeout))
    finally:
        line.release(held)
