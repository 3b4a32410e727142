"""One device at run time: connect, poll or stream, normalise, reconnect, report status.

Devices poll on a monotonic schedule without drift: a poll that overruns its interval skips
the ticks it missed instead of piling them up. A device that fails is reconnected with
exponential backoff and jitter, capped at a few seconds so that a replugged device is back
quickly (a udev `add` event wakes it at once, see `edge_agent.supervision.hotplug`). Its
readings go to `deliver` and its status changes to `on_status`: the runner knows neither the
outbox nor the wire format. This is the one place a driver's poll or stream is run and
watched, so what no driver can be trusted to do is done here, once, for every driver:

- time limits: a connect, a poll and a write that do not finish in time fail as timeouts
  (a hung poll is cancelled, counted, and the device reconnected);
- a staleness watchdog on streams: a stream silent for `stale_after` seconds is reconnected,
  and a stream that ends is a disconnect, not a silent stop;
- a fair share: at most `max_rate` samples a second are published (`RateGate`), and a stream
  consumer hands the event loop back every few milliseconds, so a chatty device can neither
  starve the others' polls nor fill the outbox;
- the core's own failures (normalising, encoding, the outbox) are counted as dropped samples
  of the device (`publish_failed`), never blamed on the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import operator
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent import logs
from edge_agent.backoff import Backoff
from edge_agent.config import DeviceConfig
from edge_agent.driver import Driver, point_specs
from edge_agent.errors import DeviceDisconnected, DeviceError, DeviceTimeout
from edge_agent.model import PointSpec, Sample
from edge_agent.normalize import Normalizer, Scaling
from edge_agent.supervision.rate import RateGate, default_rate

#: consecutive failed polls after which the transport is torn down and reconnected
FAILED_POLLS_BEFORE_RECONNECT = 3
#: reconnect backoff of a device: a replugged device is found again within this many seconds
RECONNECT_INITIAL_DELAY = 0.5
RECONNECT_MAX_DELAY = 5.0
#: the core's time limits, in multiples of the device's `timeout` (docs/operations.md):
#: a connect and a close get 5, a write 3; a poll `Driver.poll_time_limit()` (interval + 10)
CONNECT_TIMEOUT_FACTOR = 5
WRITE_TIMEOUT_FACTOR = 3
#: a stream's default `stale_after`: this many intervals, and never less than STALE_FLOOR s
STALE_INTERVALS = 10
STALE_FLOOR = 10.0
#: a stream consumer gives the event loop back after running this long (seconds)
STREAM_SLICE = 0.005

_METRIC = operator.itemgetter("metric")

#: (device, readings, read timestamp in ms): hands one poll's readings to delivery
Deliver = Callable[[str, list[dict[str, Any]], int], None]


#: devices that share one phase of their interval (see poll_phase)
PHASE_GROUP = 16


def poll_phase(index: int, count: int) -> float:
    """Where in its interval the `index`-th of `count` devices polls (0 to 1).

    Devices poll in groups of up to PHASE_GROUP on one tick, and the groups are spread over
    the interval. One tick for a group is cheap: their requests go out together, the answers
    and the broker's acknowledgements come back in the same event-loop wake-ups, and one
    commit covers the group's messages (the standard workload costs 6.4 us of CPU per
    reading this way, 13-14 us with every device on a phase of its own). Capping the group
    bounds the queueing a reading can see behind its neighbours (p99 2.7 ms for 10 devices
    x 50 registers), and spreading groups keeps a hundred devices from hitting the broker and
    the CPU at one instant.
    """
    groups = -(-count // PHASE_GROUP)
    return (index // PHASE_GROUP) / groups if groups > 1 else 0.0


@dataclass
class DeviceState:
    """What the agent knows about one device; read by status messages, /metrics and /."""

    name: str
    state: str = "disconnected"
    error: str | None = None
    readings: int = 0
    polls: int = 0
    skipped_ticks: int = 0
    #: samples not published, by reason (`rate` is read from the RateGate at report time)
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    last_values: dict[str, Any] = field(default_factory=dict)


def declared_point_types(specs: dict[str, PointSpec]) -> dict[str, str]:
    """The raw type each point declares (for Sparkplug datatypes), from its PointSpec."""
    return {name: spec.value_type for name, spec in specs.items() if spec.value_type}


class DeviceRunner:
    """Owns one device: connect, poll or stream, reconnect, report status.

    It is the device's `DeviceView` for outputs and its `WriteTarget` for the downlink.
    `started` (loop time) and `phase` (a fraction of the interval) place its polls.
    """

    def __init__(self, config: DeviceConfig, driver: Driver | None,
                 load_error: str | None = None, *, deliver: Deliver,
                 on_status: Callable[[DeviceRunner], None],
                 observe_poll: Callable[[float], None],
                 started: float = 0.0, phase: float = 0.0) -> None:
        self.config, self.driver = config, driver
        self.state = DeviceState(config.name)
        if driver is not None:  # one counter: what the driver survived and what failed polls
            self.state.errors = driver.errors
        self.started, self.phase = started, phase
        self.load_error = load_error
        self.log = logs.get("edge_agent.device", device=config.name)
        self.points: dict[str, PointSpec] = {}
        self.point_types: dict[str, str] = {}
        self.normalizer = Normalizer([])
        self._load_points()
        self.writes: Counter[str] = Counter()  # downlink writes by result
        self.wake = asyncio.Event()  # set to retry connecting now (a port appeared)
        self._deliver, self._on_status, self._observe_poll = deliver, on_status, observe_poll
        self.gate = RateGate(config.max_rate or default_rate(config.interval), self._publish)
        self.stale_after = stale_limit(config)

    # -- what outputs, the downlink and the operations view read -------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def status(self) -> str:
        return self.state.state

    @property
    def error(self) -> str | None:
        return self.state.error

    @property
    def last_values(self) -> dict[str, dict[str, Any]]:
        return self.state.last_values

    def scaling(self, metric: str) -> Scaling:
        return self.normalizer.scaling(metric)

    async def write_raw(self, metric: str, raw: Any) -> None:
        if self.driver is None:
            raise DeviceError(f"device '{self.name}' has no driver")
        await asyncio.wait_for(self.driver.write(metric, raw),
                               self.config.timeout * WRITE_TIMEOUT_FACTOR)

    def report(self) -> dict[str, Any]:
        """The device's figures as plain data (status page, /metrics)."""
        state = self.state
        return {
            "name": state.name,
            "driver": self.config.driver,
            "port": self.config.port,
            "state": state.state,
            "error": state.error,
            "readings": state.readings,
            "polls": state.polls,
            "skipped_ticks": state.skipped_ticks,
            "dropped": {**state.dropped, "rate": self.gate.coalesced},
            "suppressed": self.normalizer.suppressed,
            "errors": dict(state.errors),
            "writes": dict(self.writes),
            "last_values": list(state.last_values.values()),
        }

    def _load_points(self) -> None:
        """The point metadata the core needs (the one call of `point_specs`, which builds it
        from the device's configured points by a typed contract: edge_agent.driver)."""
        if self.driver is None:
            return
        self.points = point_specs(self.driver)
        self.point_types = declared_point_types(self.points)
        self.normalizer = Normalizer(list(self.points.values()))

    # -- supervision ---------------------------------------------------------------------
    def set_status(self, state: str, error: str | None = None) -> None:
        if (state, error) == (self.state.state, self.state.error):
            return
        self.state.state, self.state.error = state, error
        self._on_status(self)

    def emit(self, sample: Sample) -> None:
        """Takes one sample from the driver: through the device's rate limit to delivery."""
        self.gate.offer(sample, time.monotonic())

    def _publish(self, sample: Sample) -> None:
        """Normalises one sample and hands what is left to delivery (the hot path).

        Anything raised here is the core's failure, not the driver's: the sample is counted
        as dropped (`publish_failed`) and logged with the device, and the device carries on.
        """
        try:
            readings = self.normalizer.readings(sample)
            if not readings:
                return
            state = self.state
            self._deliver(state.name, readings, sample.ts_ms)
            state.readings += len(readings)
            state.last_values.update(zip(map(_METRIC, readings), readings, strict=True))
        except Exception as exc:
            dropped = self.state.dropped
            dropped["publish_failed"] += 1
            count = dropped["publish_failed"]
            if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a log, not a flood
                self.log.exception("publish_failed", error=repr(exc), failures=count)

    async def run(self) -> None:
        if self.driver is None:
            self.set_status("error", self.load_error)
            self.log.error("device_disabled", error=self.load_error)
            return
        backoff = Backoff(initial=min(RECONNECT_INITIAL_DELAY, self.config.interval),
                          maximum=RECONNECT_MAX_DELAY)
        driver = self.driver
        try:
            while True:
                try:
                    await asyncio.wait_for(driver.connect(),
                                           self.config.timeout * CONNECT_TIMEOUT_FACTOR)
                    backoff.reset()
                    if driver.learns_points:  # its metrics are known only now
                        self._load_points()
                    self.normalizer.reset()  # report every point afresh after a reconnect
                    self.log.info("device_connected")
                    self.set_status("connected")
                    if driver.streaming:
                        await self._stream(driver)
                    else:
                        await self._poll(driver)
                except (DeviceError, TimeoutError, OSError) as exc:
                    default = "timeout" if isinstance(exc, TimeoutError) else "io"
                    kind = getattr(exc, "kind", default)
                    self.state.errors[kind] += 1
                    self._report_failure(exc)
                except Exception as exc:  # a driver bug must not take the agent down
                    self.state.errors["internal"] += 1
                    self.log.exception("driver_crashed", error=repr(exc))
                    self.set_status("error", f"driver error: {exc!r}")
                await self._close(driver)
                await self._wait_before_retry(backoff.next())
        finally:
            self.gate.close()
            await self._close(driver)

    async def _close(self, driver: Driver) -> None:
        """Closes the transport; a close that hangs (a blocking driver's thread still stuck
        in the poll the core cut) is given up on, so neither a reconnect nor a shutdown
        waits for it."""
        try:
            await asyncio.wait_for(driver.close(), self.config.timeout * CONNECT_TIMEOUT_FACTOR)
        except TimeoutError:
            self.log.warning("close_timed_out")
        except Exception as exc:
            self.log.warning("close_failed", error=repr(exc))

    async def _wait_before_retry(self, delay: float) -> None:
        """Sleeps `delay`, or less if `wake` is set (hotplug: a port just appeared)."""
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)
        if _current_task().cancelling():
            raise asyncio.CancelledError  # a cancel wait_for swallowed (see _poll)

    def _report_failure(self, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        self.log.warning("device_failed", error=text)
        gone = self.state.state == "connected" or isinstance(exc, DeviceDisconnected)
        self.set_status("disconnected" if gone else "error", text)

    async def _poll(self, driver: Driver) -> None:
        """Polls until a failure, each poll cut at the driver's `poll_time_limit()`."""
        limit = driver.poll_time_limit()
        watch = Watchdog(limit)
        try:
            async with watch.deadline:
                await self._poll_on_schedule(driver, watch)
        except TimeoutError:
            started = watch.since
            if not watch.deadline.expired() or started is None:
                raise  # the driver's own (a library's wait_for): a failure as before
            self._observe_poll(asyncio.get_running_loop().time() - started)
            # The driver ignored its own timeout: its transport is in an unknown state.
            message = f"poll did not finish within {limit:g} s (the core's limit)"
            self.log.warning("poll_timed_out", limit=limit)
            self.set_status("error", message)
            raise DeviceTimeout(message) from None
        finally:
            watch.stop()

    async def _poll_on_schedule(self, driver: Driver, watch: Watchdog) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        emit = self.emit
        observe = self._observe_poll
        failures = 0
        # The first poll runs at once; later ones fall on this device's phase of the interval
        # (see poll_phase).
        anchor = self.started + self.phase * interval
        next_tick = None
        task = _current_task()
        watch.start()
        while True:
            started = watch.since = loop.time()
            try:
                sample = await driver.poll()
                if task.cancelling():
                    # Python 3.11's wait_for (inside pymodbus) can swallow a cancel that
                    # lands as the response arrives; honour it here or shutdown hangs.
                    raise asyncio.CancelledError
            except DeviceDisconnected:
                raise  # the transport is gone (device unplugged): reconnect now, not in 3 polls
            except DeviceError as exc:
                observe(loop.time() - started)
                failures += 1
                self.state.errors[exc.kind] += 1
                self.log.warning("poll_failed", error=str(exc), kind=exc.kind)
                self.set_status("error", str(exc))
                if failures >= FAILED_POLLS_BEFORE_RECONNECT:
                    raise
            else:
                observe(loop.time() - started)
                if failures:
                    failures = 0
                    self.set_status("connected")
                self.state.polls += 1
                emit(sample)
                del sample  # not held while waiting for the next tick (47 readings a device)
            watch.since = None
            now = loop.time()
            if next_tick is None:
                next_tick = anchor + (math.floor((now - anchor) / interval) + 1) * interval
            else:
                next_tick += interval
            if next_tick < now:  # overran: skip the missed ticks, keep the phase
                missed = int((now - next_tick) / interval) + 1
                next_tick += missed * interval
                self.state.skipped_ticks += missed
            await asyncio.sleep(next_tick - now)

    async def _stream(self, driver: Driver) -> None:
        """Consumes the driver's stream under a staleness watchdog, in slices of the loop."""
        offer, stale_after = self.gate.offer, self.stale_after
        task = _current_task()
        clock = time.monotonic  # the loop's clock, without the method lookups
        watch = Watchdog(stale_after)
        slice_start = clock()
        try:
            async with watch.deadline:
                if stale_after:
                    watch.since = slice_start
                    watch.start()
                async for sample in driver.stream():
                    if task.cancelling():
                        raise asyncio.CancelledError  # see _poll
                    watch.since = now = clock()
                    offer(sample, now)
                    if now - slice_start >= STREAM_SLICE:  # a chatty stream: let others run
                        await asyncio.sleep(0)
                        slice_start = clock()
        except TimeoutError:
            if not watch.deadline.expired():
                raise  # the driver's own
            error = StreamStale(stale_after)
            self.set_status("error", str(error))
            raise error from None
        finally:
            watch.stop()
        raise DeviceDisconnected("the stream ended")


class Watchdog:
    """Cuts what the runner awaits once `since` (loop time) is `limit` seconds old.

    One timer per device, re-armed from `since` when it fires, so a poll or a streamed
    sample costs the watchdog one attribute store, not a timer of its own. `since` is None
    while nothing is watched (between polls). Expiry cancels the awaiting task through
    `deadline` (an `asyncio.timeout`), which leaves its `async with` as TimeoutError.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since: float | None = None
        self.deadline = asyncio.timeout(None)
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = self._loop.call_at(self._loop.time() + self.limit, self._check)

    def _check(self) -> None:
        since, now = self.since, self._loop.time()
        if since is not None and now - since >= self.limit:
            self._timer = None
            self.deadline.reschedule(now)  # expire now: cancels the awaiting task
        else:
            self._timer = self._loop.call_at((now if since is None else since) + self.limit,
                                             self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class StreamStale(DeviceTimeout):
    """A stream gave no sample for `stale_after` seconds: reconnected like a timeout."""

    kind = "stale"

    def __init__(self, after: float) -> None:
        super().__init__(f"stale: no data for {after:g} s")


def stale_limit(config: DeviceConfig) -> float:
    """A stream's `stale_after` in seconds, 0 for never."""
    if config.stale_after is not None:
        return config.stale_after
    return max(STALE_INTERVALS * config.interval, STALE_FLOOR)


def _current_task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("a device runner runs as a task")
    return task
