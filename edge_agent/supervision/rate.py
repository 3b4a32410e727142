"""A device's share of the agent: at most `max_rate` samples a second reach delivery.

One chatty device (a sensor printing thousands of lines a second) must not fill the outbox,
the broker link and the event loop at the expense of the others. A token bucket lets a
device publish `rate` samples a second, with a burst of one second's worth; a sample beyond
it is not queued but merged into one pending sample, the latest value of each metric
winning, which goes out as soon as the bucket has a token again (a timer, so the last
values of a burst are published even if the device then falls silent). What a device
publishes is therefore never older than 1/rate seconds, memory per device is one reading per
metric, and every sample merged away is counted (`coalesced`, exposed as
`edge_agent_samples_dropped_total{reason="rate"}`).

The check costs a few arithmetic operations per sample (a poll, or one streamed record), not
per reading.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from edge_agent.model import Reading, Sample


class RateGate:
    """Passes samples to `publish` at most `rate` a second; merges the excess."""

    def __init__(self, rate: float, publish: Callable[[Sample], None]) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.publish = publish
        #: samples merged into a later one instead of being published on their own
        self.coalesced = 0
        self._tokens = self.burst
        self._stamp = time.monotonic()  # the event loop's clock
        self._pending: dict[str, Reading] = {}
        self._pending_ts = 0
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, sample: Sample, now: float) -> None:
        """`now`: loop time (monotonic seconds)."""
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0 and not self._pending:  # the common case: under the rate
            self._tokens = tokens - 1.0
            self.publish(sample)
            return
        self._tokens = tokens
        pending = self._pending
        if pending:
            self.coalesced += 1  # two samples become one message
        for reading in sample.readings:
            pending[reading[0]] = reading
        self._pending_ts = sample.ts_ms
        if tokens >= 1.0:
            self._release(now)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(
                now + (1.0 - tokens) / self.rate, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._pending:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._release(now)

    def _release(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tokens = max(0.0, self._tokens - 1.0)
        merged = Sample(self._pending_ts, list(self._pending.values()))
        self._pending = {}
        self.publish(merged)

    def close(self) -> None:
        """Forgets what is pending (the device stopped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = {}


def default_rate(interval: float) -> float:
    """100 samples a second, or twice a polled device's own rate if that is higher: the
    limit never touches a device that keeps its poll schedule."""
    return max(DEFAULT_MAX_RATE, 2.0 / interval)


#: samples a second a device may publish unless its `max_rate` says otherwise
DEFAULT_MAX_RATE = 100.0
