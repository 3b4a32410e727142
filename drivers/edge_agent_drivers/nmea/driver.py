"""The `nmea` driver: streams one sample per fix epoch from a GNSS receiver.

Reads through the event loop (see edge_agent.serial_transport for why not a thread).
Sentences that fail a check are dropped and counted in `counters` by kind (`checksum`,
`truncated`, `noise`, `parse`, `overflow`) and logged sparingly; a single value that is
malformed or physically impossible (see `codec.RANGES`) is published as bad and counted as
`range`. The stream never fails on bad input, only on a lost port.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

from edge_agent.sdk import (
    DeviceDisconnected,
    Driver,
    FaultTally,
    LineSplitter,
    PointSpec,
    Sample,
    SerialTransport,
    get_logger,
    now_ms,
)
from edge_agent_drivers.nmea.codec import (
    DECODERS,
    EpochAssembler,
    NmeaError,
    decode,
    parse_sentence,
)
from edge_agent_drivers.nmea.config import NmeaDevice

#: longer than any sentence (82 by the standard; some receivers send ~120)
MAX_SENTENCE = 512
KNOTS_TO_METRES_PER_SECOND = 1852 / 3600

POINTS = [
    PointSpec("latitude", "deg"),
    PointSpec("longitude", "deg"),
    PointSpec("altitude", "m"),
    PointSpec("speed", "m/s", scale=KNOTS_TO_METRES_PER_SECOND),  # NMEA gives knots
    PointSpec("course", "deg"),
    PointSpec("satellites"),
    PointSpec("fix_quality"),
    PointSpec("fix_type"),
    PointSpec("hdop"),
    PointSpec("pdop"),
    PointSpec("vdop"),
    PointSpec("gnss_time", "ms"),
]


class NmeaDriver(Driver):
    config_model = NmeaDevice
    streaming = True

    def __init__(self, config: NmeaDevice) -> None:
        super().__init__(config)
        self.config: NmeaDevice = config
        self.log = get_logger("edge_agent.driver.nmea", device=config.name)
        #: sentences dropped since start, by kind: also the device's error counter, so they
        #: reach /metrics as edge_agent_read_errors_total{kind="checksum"...}
        self.counters = self.errors = FaultTally(self.log, "nmea_sentence_dropped")
        #: sentences decoded, by type (diagnostics: what the receiver actually sends)
        self.sentences: Counter[str] = Counter()
        self._types = frozenset(config.sentences or DECODERS)
        self._talkers = frozenset(config.talkers) if config.talkers else None
        self._transport: SerialTransport | None = None

    def points(self) -> list[PointSpec]:
        return POINTS

    async def connect(self) -> None:
        self._transport = await SerialTransport.open_for(self.config)

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    async def stream(self) -> AsyncIterator[Sample]:
        transport = self._transport
        if transport is None:
            raise DeviceDisconnected("not connected")
        splitter = LineSplitter(b"\n", MAX_SENTENCE)
        epoch = EpochAssembler()
        gap = self.config.epoch_gap or None
        while True:
            data = await transport.read(gap if epoch.pending else None)
            if not data:  # the receiver fell silent: its epoch is complete
                sample = epoch.flush()
                if sample is not None:
                    yield sample
                continue
            ts = now_ms()
            dropped = transport.take_dropped()
            if dropped:
                self.counters.record("overrun", f"{dropped} bytes dropped unread")
            for line in splitter.feed(data):
                sample = self._add(epoch, line, ts)
                if sample is not None:
                    yield sample
            if splitter.overflows:
                for _ in range(splitter.overflows):
                    self.counters.record("overflow", f"no line end within {MAX_SENTENCE}")
                splitter.overflows = 0

    def _add(self, epoch: EpochAssembler, line: bytes, ts: int) -> Sample | None:
        try:
            sentence = parse_sentence(line, self.config.require_checksum)
            if sentence.noise:
                self.counters.record("noise", "bytes before the sentence", line)
            if sentence.type not in self._types or (
                    self._talkers is not None and sentence.talker not in self._talkers):
                return None
            decoded = decode(sentence)
        except NmeaError as exc:
            self.counters.record(exc.kind, str(exc), line)
            return None
        if decoded is None:
            return None
        for metric in decoded.rejected:  # published as bad: a value no receiver can mean
            self.counters.record("range", f"{metric}: malformed or outside its valid range",
                                 line)
        self.sentences[sentence.type] += 1
        return epoch.add(sentence.type, decoded, ts)
