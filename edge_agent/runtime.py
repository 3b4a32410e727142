"""The agent at run time: one supervised task per device, the outbox and the publisher.

Devices poll on a monotonic schedule without drift: a poll that overruns its interval skips
the ticks it missed instead of piling them up. A device that fails is reconnected with
exponential backoff and jitter, capped at a few seconds so that a replugged device is back
quickly (a udev `add` event wakes it at once, see `edge_agent.hotplug`); its status is
published retained on every change. Devices, the publisher and the HTTP server are started
and stopped one by one, which is how a reloaded config is applied (`edge_agent.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import operator
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import config as config_mod
from edge_agent import fleet, logs, registry, snapshot
from edge_agent.backoff import Backoff
from edge_agent.config import AgentConfig, DeviceConfig, PointConfig
from edge_agent.decode import TYPE_NAMES
from edge_agent.downlink import JsonDownlink, WriteResult, write_point
from edge_agent.driver import Driver
from edge_agent.errors import ConfigError, DeviceDisconnected, DeviceError, DriverLoadError
from edge_agent.hotplug import UdevMonitor
from edge_agent.httpserver import HttpServer
from edge_agent.identity import client_id, node_name
from edge_agent.metrics import AgentMetrics
from edge_agent.model import PointSpec, Sample
from edge_agent.mqtt import MqttPublisher
from edge_agent.normalize import Normalizer
from edge_agent.outbox import Outbox, open_outbox
from edge_agent.reload import WATCH_INTERVAL, ConfigWatcher, ReloadPlan, plan
from edge_agent.topics import JsonTopics

#: consecutive failed polls after which the transport is torn down and reconnected
FAILED_POLLS_BEFORE_RECONNECT = 3
#: reconnect backoff of a device: a replugged device is found again within this many seconds
RECONNECT_INITIAL_DELAY = 0.5
RECONNECT_MAX_DELAY = 5.0
#: /healthz fails when the event loop does not run a callback within this many seconds
HEALTH_TIMEOUT = 2.0
#: how long a scrape or the status page waits for the loop to take a snapshot
SNAPSHOT_TIMEOUT = 2.0
#: outstanding publish-latency probes kept at most (one per flushed batch; see emit)
MAX_LATENCY_PROBES = 4096

_METRIC = operator.itemgetter("metric")


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
    errors: Counter[str] = field(default_factory=Counter)
    last_values: dict[str, Any] = field(default_factory=dict)


def point_specs(driver: Driver, config: DeviceConfig) -> dict[str, PointSpec]:
    """The driver's point specs, completed from the device's configured points.

    Report-by-exception (`deadband`, `heartbeat`), limits and the raw type are keys of the
    common point model (`PointConfig`), so the core fills them in for every driver whose
    points or fields use it, and a driver's `points()` need not repeat them.
    """
    configured: dict[str, PointConfig] = {}
    for key in ("points", "fields"):
        for point in getattr(config, key, None) or []:
            if isinstance(point, PointConfig):
                configured[point.name] = point
    specs: dict[str, PointSpec] = {}
    for spec in driver.points():
        point = configured.get(spec.name)
        if point is not None:
            size, percent = point.deadband_spec()
            raw_type = getattr(point, "type", None)
            spec = dataclasses.replace(
                spec,
                deadband=spec.deadband if spec.deadband is not None else size,
                deadband_percent=spec.deadband_percent or percent,
                heartbeat=spec.heartbeat if spec.heartbeat is not None else point.heartbeat,
                minimum=spec.minimum if spec.minimum is not None else point.min,
                maximum=spec.maximum if spec.maximum is not None else point.max,
                value_type=spec.value_type or (raw_type if raw_type in TYPE_NAMES else None))
        specs[spec.name] = spec
    return specs


class DeviceRunner:
    """Owns one device: connect, poll or stream, reconnect, report status."""

    def __init__(self, agent: Agent, config: DeviceConfig, driver: Driver | None,
                 load_error: str | None = None) -> None:
        self.agent, self.config, self.driver = agent, config, driver
        self.state = DeviceState(config.name)
        if driver is not None:  # one counter: what the driver survived and what failed polls
            self.state.errors = driver.errors
        self.phase = 0.0  # fraction of the interval this device's polls are offset by
        self.load_error = load_error
        self.log = logs.get("edge_agent.device", device=config.name)
        self.points = point_specs(driver, config) if driver else {}
        self.normalizer = Normalizer(list(self.points.values()))
        self.topic = agent.topics.telemetry(config.name)
        self.writes: Counter[str] = Counter()  # downlink writes by result
        self.wake = asyncio.Event()  # set to retry connecting now (a port appeared)
        self._poll_timer = agent.metrics.poll_duration.labels(config.name)

    def set_status(self, state: str, error: str | None = None) -> None:
        if (state, error) == (self.state.state, self.state.error):
            return
        self.state.state, self.state.error = state, error
        self.agent.publish_device_status(self)

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
                    await asyncio.wait_for(driver.connect(), self.config.timeout * 5)
                    backoff.reset()
                    if driver.learns_points:  # its metrics are known only now
                        self.points = point_specs(driver, self.config)
                        self.normalizer = Normalizer(list(self.points.values()))
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
                with contextlib.suppress(Exception):
                    await driver.close()
                await self._wait_before_retry(backoff.next())
        finally:
            with contextlib.suppress(Exception):
                await driver.close()

    async def _wait_before_retry(self, delay: float) -> None:
        """Sleeps `delay`, or less if `wake` is set (hotplug: a port just appeared)."""
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), delay)
        if asyncio.current_task().cancelling():
            raise asyncio.CancelledError  # a cancel wait_for swallowed (see _poll)

    def _report_failure(self, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        self.log.warning("device_failed", error=text)
        gone = self.state.state == "connected" or isinstance(exc, DeviceDisconnected)
        self.set_status("disconnected" if gone else "error", text)

    async def _poll(self, driver: Driver) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        emit = self.agent.emit
        observe = self._poll_timer.observe
        failures = 0
        # The first poll runs at once; later ones fall on this device's phase of the interval
        # (see poll_phase).
        anchor = self.agent.started + self.phase * interval
        next_tick = None
        task = asyncio.current_task()
        while True:
            started = loop.time()
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
                emit(self, sample)
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
        emit = self.agent.emit
        task = asyncio.current_task()
        async for sample in driver.stream():
            if task.cancelling():
                raise asyncio.CancelledError  # see _poll
            emit(self, sample)


class Agent:
    """Wires config, devices, outbox and publisher; `run()` until the stop event is set.

    `config_path`, when given, is where a reload (SIGHUP, or the file changing) reads the
    new config from.
    """

    def __init__(self, config: AgentConfig, config_path: Path | None = None,
                 watch_interval: float | None = None, config_hash: str | None = None) -> None:
        self.node = node_name(config.node)
        self.config = fleet.for_node(config, self.node)
        #: the node's config hash its status carries (see edge_agent.fleet.config_hash)
        self.config_hash = config_hash or fleet.config_hash(self.config)
        self.config_path = config_path
        self.watch_interval = watch_interval
        self.topics = JsonTopics(config.mqtt.topic_prefix, self.node)
        self.log = logs.get("edge_agent.agent")
        self.runners: dict[str, DeviceRunner] = {}
        self.outbox: Outbox | None = None
        self.publisher: MqttPublisher | None = None
        self.downlink: JsonDownlink | None = None
        self.sparkplug: Any = None  # edge_agent.sparkplug session with mqtt.format: sparkplug
        self.http: HttpServer | None = None
        self.metrics = AgentMetrics(self._snapshot_from_thread)
        self.reload_stats: dict[str, Any] = {"attempts": 0, "failures": 0, "last_ok": 1,
                                             "last_ts": None, "last_error": None}
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = 0.0  # loop time at start: the anchor of every device's poll phase
        self._device_tasks: dict[str, asyncio.Task[None]] = {}
        self._publisher_task: asyncio.Task[None] | None = None
        self._published_before = 0  # by publishers replaced on reload
        self._latency_probes: dict[int, int] = {}  # outbox row id -> read ts (ms)
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    def _make_runner(self, device: DeviceConfig) -> DeviceRunner:
        try:
            driver_cls = registry.load(device.driver)
            return DeviceRunner(self, device, driver_cls(device))
        except DriverLoadError as exc:
            return DeviceRunner(self, device, None, str(exc))

    # -- telemetry path (hot) ------------------------------------------------------------
    def emit(self, runner: DeviceRunner, sample: Sample) -> None:
        readings = runner.normalizer.readings(sample)
        if not readings:
            return
        state = runner.state
        state.readings += len(readings)
        name = runner.config.name
        outbox = self.outbox
        seq = outbox.next_seq(name)
        row_id = outbox.append(name, seq, runner.topic,
                               self.topics.telemetry_payload(name, seq, readings))
        state.last_values.update(zip(map(_METRIC, readings), readings, strict=True))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if len(self._latency_probes) < MAX_LATENCY_PROBES:
                self._latency_probes[row_id] = sample.ts_ms
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Commits everything appended in this loop iteration at once, then publishes it."""
        self._flush_scheduled = False
        self.outbox.flush()
        self.publisher.pump()

    def _on_acked(self, ids: list[int]) -> None:
        probes = self._latency_probes
        if not probes:
            return
        now = time.time()  # not truncated to ms: a sub-millisecond publish is not 0
        observe = self.metrics.publish_latency.observe
        for row_id in ids:
            read_ms = probes.pop(row_id, None)
            if read_ms is not None:
                observe(max(0.0, now - read_ms / 1000))

    # -- status --------------------------------------------------------------------------
    def publish_device_status(self, runner: DeviceRunner) -> None:
        if self.sparkplug is not None:  # DBIRTH / DDEATH instead of a JSON status
            self.sparkplug.device_status(runner.state.name, runner.state.state)
        elif self.publisher is not None:
            state = runner.state
            self.publisher.publish_state(
                self.topics.device_status(state.name),
                self.topics.device_status_payload(state.state, state.error))

    def _on_broker_connected(self) -> None:
        if self.sparkplug is not None:
            return  # the Sparkplug session publishes the births
        self.publisher.publish_state(self.topics.node_status,
                                     self.topics.node_status_payload("online"))
        for runner in self.runners.values():
            self.publish_device_status(runner)

    def published_total(self) -> int:
        return self._published_before + (self.publisher.published if self.publisher else 0)

    # -- downlink ------------------------------------------------------------------------
    async def write(self, device: str, metric: str, value: Any,
                    request_id: Any = None) -> WriteResult:
        """Sets a point of a device: the one write path of every wire format."""
        runner = self.runners.get(device)
        if runner is None:
            self.log.warning("write_refused", device=device, metric=metric,
                             request_id=request_id, error="unknown device")
            return WriteResult(False, f"no device '{device}' on this node", refused=True)
        return await write_point(runner, metric, value, request_id)

    # -- HTTP and hotplug ----------------------------------------------------------------
    def _snapshot_from_thread(self) -> dict[str, Any] | None:
        return snapshot.call_in_loop(self._loop, lambda: snapshot.take(self), SNAPSHOT_TIMEOUT)

    def loop_alive(self, timeout: float | None = None) -> bool:
        """True if the event loop ran a callback within `timeout` (from another thread)."""
        answer = snapshot.call_in_loop(self._loop, lambda: True,
                                       HEALTH_TIMEOUT if timeout is None else timeout)
        return bool(answer)

    def on_port_added(self) -> None:
        """A serial or USB device appeared: every waiting device retries now."""
        for runner in self.runners.values():
            if runner.state.state != "connected":
                runner.wake.set()

    async def _start_http(self) -> None:
        http = self.config.http
        if not http.enabled:
            return
        server = HttpServer(http.listen, self.loop_alive, self._snapshot_from_thread,
                            self.metrics.exposition)
        try:
            await asyncio.get_running_loop().run_in_executor(None, server.start)
        except OSError as exc:  # the port is taken: telemetry matters more than /metrics
            self.log.error("http_failed", listen=http.listen, error=exc.strerror or str(exc))
            return
        self.http = server

    async def _stop_http(self) -> None:
        if self.http is not None:
            server, self.http = self.http, None
            await asyncio.get_running_loop().run_in_executor(None, server.stop)

    # -- devices and publisher, one by one -----------------------------------------------
    def _start_device(self, device: DeviceConfig, phase: float = 0.0) -> None:
        runner = self._make_runner(device)
        runner.phase = phase
        self.runners[device.name] = runner
        self._device_tasks[device.name] = asyncio.create_task(runner.run(),
                                                              name=f"device-{device.name}")

    async def _stop_device(self, name: str, removed: bool) -> None:
        task = self._device_tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.runners.pop(name, None)
        if self.sparkplug is not None:  # DDEATH: the host must not keep it alive
            self.sparkplug.device_status(name, "removed")
        if removed:  # its retained status would claim it still exists
            if self.publisher is not None and self.sparkplug is None:
                self.publisher.publish_state(self.topics.device_status(name), b"")
            self.metrics.forget_device(name)

    def _start_publisher(self) -> None:
        config = self.config
        will = (self.topics.node_status, self.topics.node_status_payload("offline"))
        publisher = MqttPublisher(config.mqtt, client_id(self.node), self.outbox, will)
        publisher.on_connected.append(self._on_broker_connected)
        publisher.on_acked.append(self._on_acked)
        if config.mqtt.format == "json":
            self.downlink = JsonDownlink(self, publisher.publish_now)
            publisher.subscriptions.append(self.topics.set_filter())
            publisher.on_message = self.downlink.on_message
        else:
            from edge_agent.sparkplug.bridge import attach

            self.sparkplug = attach(self, publisher)
        self.publisher = publisher
        self._publisher_task = asyncio.create_task(publisher.run(), name="mqtt")

    async def _stop_publisher(self) -> None:
        publisher, task = self.publisher, self._publisher_task
        if publisher is None:
            return
        if self.downlink is not None:
            await self.downlink.close()
            self.downlink = None
        final = (self.topics.node_status, self.topics.node_status_payload("offline"))
        if self.sparkplug is not None:  # NDEATH before the clean disconnect, no JSON status
            self.sparkplug.shutdown()
            final, self.sparkplug = None, None
        await publisher.stop(final)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._published_before += publisher.published
        self.publisher, self._publisher_task = None, None

    # -- hot reload ----------------------------------------------------------------------
    def request_reload(self, reason: str = "SIGHUP") -> None:
        """Schedules a reload (safe to call from a signal handler on the loop)."""
        self._spawn(self.reload(reason))

    async def reload(self, reason: str = "requested") -> bool:
        """Re-reads the config file and applies only what changed.

        An invalid file keeps the running config: the problems are logged and counted
        (`edge_agent_config_reload_failures_total`), nothing is stopped.
        """
        if self.config_path is None:
            self.log.warning("config_reload_skipped", reason=reason, error="no config file")
            return False
        async with self._reload_lock:
            stats = self.reload_stats
            stats["attempts"] += 1
            stats["last_ts"] = time.time()
            try:
                new = config_mod.load(self.config_path, strict_drivers=False)
            except ConfigError as exc:
                stats["failures"] += 1
                stats["last_ok"] = 0
                stats["last_error"] = "; ".join(exc.problems)
                self.log.error("config_reload_failed", reason=reason, path=str(self.config_path),
                               problems=exc.problems, kept="the running config")
                return False
            changes = plan(self.config, new)
            self.log.info("config_reloaded", reason=reason, **changes.summary())
            await self._apply(new, changes)
            stats["last_ok"] = 1
            stats["last_error"] = None
            return True

    async def _apply(self, new: AgentConfig, changes: ReloadPlan) -> None:
        if changes.needs_restart:
            self.log.warning("config_needs_restart", settings=changes.needs_restart,
                             note="kept the running values until the agent restarts")
            new = new.model_copy(update={"buffer": self.config.buffer})
        for name in changes.stop + changes.restart:
            await self._stop_device(name, removed=name in changes.stop)
        self.config = new
        if changes.log_level:
            logs.configure(new.log_level, self.node)
        if changes.mqtt:
            await self._stop_publisher()
            self.node = node_name(new.node)
            self.topics = JsonTopics(new.mqtt.topic_prefix, self.node)
            self._start_publisher()
        devices = {d.name: d for d in new.devices}
        for name in changes.restart + changes.start:
            self._start_device(devices[name], phase=poll_phase(len(self.runners),
                                                               len(self.runners) + 1))
        if changes.http:
            await self._stop_http()
            await self._start_http()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self.started = self._loop.time()
        config = self.config
        self.outbox = open_outbox(config.buffer, self.log)
        self._start_publisher()
        devices = [d for d in config.devices if d.enabled]
        self.log.info("agent_starting", devices=len(devices), broker=config.mqtt.urls)
        for index, device in enumerate(devices):
            self._start_device(device, phase=poll_phase(index, len(devices)))
        await self._start_http()
        udev = UdevMonitor(self.on_port_added)
        udev.start()
        if self.config_path is not None:
            watcher = ConfigWatcher(self.config_path, lambda: self.reload("file changed"),
                                    self.watch_interval or WATCH_INTERVAL)
            self._spawn(watcher.run())
        await stop.wait()
        self.log.info("agent_stopping", grace=self.config.shutdown_grace)
        udev.stop()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        tasks = list(self._device_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flush()
        drained = await self.publisher.drain(self.config.shutdown_grace)
        for runner in self.runners.values():
            runner.set_status("disconnected", None)
        await self._stop_publisher()
        await self._stop_http()
        self.log.info("agent_stopped", drained=drained, kept=self.outbox.depth())
        self.outbox.close()
