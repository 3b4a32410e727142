"""The `line` driver: a serial instrument that speaks lines of text.

Streaming devices (an Arduino printing CSV, a scale in continuous mode) are read as they talk:
one sample per parsed line. Polled devices get `command` written every interval and the first
line that is not ignored, within `timeout`, is their answer. Lines that cannot be read are
counted in `counters` by kind (`no_match`, `columns`, `json`, `encoding`, `overflow`, `parse`,
`overrun`: bytes the transport dropped because they came faster than they were read) and
logged, never raised out of a stream; in poll mode an unreadable answer fails that poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from edge_agent.sdk import (
    DeviceDisconnected,
    DeviceTimeout,
    Driver,
    FaultTally,
    LineSplitter,
    ProtocolError,
    Reading,
    Sample,
    SerialTransport,
    get_logger,
    now_ms,
)
from edge_agent_drivers.line.codec import LineError, LineParser
from edge_agent_drivers.line.config import LineDevice


class LineDriver(Driver):
    config_model = LineDevice

    def __init__(self, config: LineDevice) -> None:
        super().__init__(config)
        self.config: LineDevice = config
        self.streaming = config.mode == "stream"  # type: ignore[misc]  # per device, not class
        self.parser = LineParser(config)
        self.log = get_logger("edge_agent.driver.line", device=config.name)
        #: inputs dropped since start, by kind: also the device's error counter, so they
        #: reach /metrics as edge_agent_read_errors_total{kind="no_match"...}
        self.counters = self.errors = FaultTally(self.log, "line_dropped")
        self._terminator = config.terminator.encode(config.encoding)
        self._splitter = LineSplitter(self._terminator, config.max_line)
        self._command = config.command.encode(config.encoding) if config.command else b""
        self._transport: SerialTransport | None = None

    async def connect(self) -> None:
        transport = self._transport = await SerialTransport.open_for(self.config)
        self._splitter.reset()
        if self.config.setup:
            transport.write(self.config.setup.encode(self.config.encoding))

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _transport_or_fail(self) -> SerialTransport:
        if self._transport is None:
            raise DeviceDisconnected("not connected")
        return self._transport

    def _text(self, line: bytes) -> str | None:
        try:
            return line.decode(self.config.encoding)
        except UnicodeDecodeError:
            self.counters.record("encoding", f"not {self.config.encoding}", line)
            return None

    def _readings(self, text: str) -> list[Reading] | None:
        try:
            return self.parser.parse(text)
        except LineError as exc:
            self.counters.record(exc.kind, str(exc), text)
            return None

    def _count_overflows(self) -> None:
        overflows = self._splitter.overflows
        if overflows:
            self._splitter.overflows = 0
            for _ in range(overflows):
                self.counters.record("overflow", f"no terminator within {self.config.max_line}")

    def _count_overrun(self, transport: SerialTransport) -> None:
        dropped = transport.take_dropped()
        if dropped:
            self.counters.record("overrun", f"{dropped} bytes dropped unread: the device "
                                 "sends faster than its lines are read")

    async def stream(self) -> AsyncIterator[Sample]:
        transport = self._transport_or_fail()
        splitter, parser = self._splitter, self.parser
        while True:
            data = await transport.read()
            ts = now_ms()
            self._count_overrun(transport)
            lines = splitter.feed(data)
            if splitter.overflows:
                self._count_overflows()
            for line in lines:
                text = self._text(line)
                if text is None or parser.ignored(text):
                    continue
                readings = self._readings(text)
                if readings:
                    yield Sample(ts, readings)

    async def poll(self) -> Sample:
        transport = self._transport_or_fail()
        transport.discard_input()
        self._splitter.reset()
        transport.write(self._command)
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + self.config.timeout
        while True:
            remaining = deadline - loop_time()
            if remaining <= 0:
                raise DeviceTimeout(f"no answer to {self.config.command!r} "
                                    f"within {self.config.timeout}s")
            data = await transport.read(remaining)
            ts = now_ms()
            lines = self._splitter.feed(data) if data else []
            if self._splitter.overflows:
                self._count_overflows()
            for line in lines:
                text = self._text(line)
                if text is None or self.parser.ignored(text):
                    continue
                readings = self._readings(text)
                if readings is None:
                    raise ProtocolError(f"unreadable answer: {text[:80]!r}")
                return Sample(ts, readings)
