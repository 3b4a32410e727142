"""The agent: wires its parts together, runs them, and applies a reloaded config.

The parts, each given only what it needs (see docs/architecture.md):
- `Supervisor` (edge_agent.supervision): one runner per device, polling or streaming;
- `Delivery` (edge_agent.delivery): the outbox and the MQTT publisher pumping it;
- the `Output` of `mqtt.format` (edge_agent.outputs), chosen once here;
- `Downlink` (edge_agent.downlink): command messages to validated writes and answers;
- operations (edge_agent.ops): HTTP, readiness, status page and metrics from a snapshot.
Devices, the publisher and the HTTP server are started and stopped one by one, which is how
a reloaded config is applied (`edge_agent.reload`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from edge_agent import config as config_mod
from edge_agent import logs, outputs
from edge_agent.config import AgentConfig
from edge_agent.delivery import Delivery
from edge_agent.downlink import Downlink
from edge_agent.errors import ConfigError
from edge_agent.identity import client_id, node_name
from edge_agent.ops import snapshot
from edge_agent.ops.http import HttpServer
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.outbox import Outbox, open_outbox
from edge_agent.outputs.base import Output
from edge_agent.reload import WATCH_INTERVAL, ConfigWatcher, ReloadPlan, plan
from edge_agent.supervision.device import DeviceRunner, poll_phase
from edge_agent.supervision.hotplug import UdevMonitor
from edge_agent.supervision.supervisor import Supervisor

#: /healthz fails when the event loop does not run a callback within this many seconds
HEALTH_TIMEOUT = 2.0
#: how long a scrape or the status page waits for the loop to take a snapshot
SNAPSHOT_TIMEOUT = 2.0


class Agent:
    """Wires config, devices, delivery and output; `run()` until the stop event is set.

    `config_path`, when given, is where a reload (SIGHUP, or the file changing) reads the
    new config from.
    """

    #: made by run(): the outbox is opened on the event loop's thread
    delivery: Delivery

    def __init__(self, config: AgentConfig, config_path: Path | None = None,
                 watch_interval: float | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.watch_interval = watch_interval
        self.node = node_name(config.node)
        self.log = logs.get("edge_agent.agent")
        self.metrics = AgentMetrics(self._snapshot_from_thread)
        self.supervisor = Supervisor(
            deliver=self._deliver, on_status=self._device_status,
            poll_timer=lambda name: self.metrics.poll_duration.labels(name).observe,
            on_stopped=self._device_stopped)
        self.output: Output | None = None
        self.downlink: Downlink | None = None
        self.http: HttpServer | None = None
        self.reload_stats: dict[str, Any] = {"attempts": 0, "failures": 0, "last_ok": 1,
                                             "last_ts": None, "last_error": None}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    # -- between the parts ---------------------------------------------------------------
    def _deliver(self, device: str, readings: list[dict[str, Any]], ts_ms: int) -> None:
        self.delivery.deliver(device, readings, ts_ms)

    def _device_status(self, runner: DeviceRunner) -> None:
        if self.output is not None:
            self.output.device_status(runner)

    def _device_stopped(self, name: str, removed: bool) -> None:
        if self.output is not None:
            self.output.device_stopped(name, removed)
        if removed:
            self.metrics.forget_device(name)

    def _start_output(self) -> None:
        """Chooses the output of `mqtt.format` and connects it (the only place that asks)."""
        delivery = self.delivery
        output = outputs.create(self.config, self.node, self.supervisor, delivery)
        self.output = output
        self.downlink = Downlink(output, self.supervisor.view)
        delivery.start(self.config.mqtt, client_id(self.node), output,
                       self.downlink.on_message)

    async def _stop_output(self) -> None:
        if self.downlink is not None:
            await self.downlink.close()
            self.downlink = None
        await self.delivery.stop()
        self.output = None

    # -- operations ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The agent's state as plain data (on the event loop)."""
        return snapshot.take(node=self.node, broker_urls=self.config.mqtt.urls,
                             durable=self.config.buffer.path is not None,
                             delivery=self.delivery, devices=self.supervisor.views(),
                             reload=self.reload_stats)

    def _snapshot_from_thread(self) -> dict[str, Any] | None:
        return snapshot.call_in_loop(self._loop, self.snapshot, SNAPSHOT_TIMEOUT)

    def loop_alive(self, timeout: float | None = None) -> bool:
        """True if the event loop ran a callback within `timeout` (from another thread)."""
        answer = snapshot.call_in_loop(self._loop, lambda: True,
                                       HEALTH_TIMEOUT if timeout is None else timeout)
        return bool(answer)

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
        supervisor = self.supervisor
        for name in changes.stop + changes.restart:
            await supervisor.stop(name, removed=name in changes.stop)
        self.config = new
        if changes.log_level:
            logs.configure(new.log_level, self.node)
        if changes.mqtt:
            await self._stop_output()
            self.node = node_name(new.node)
            self._start_output()
        devices = {d.name: d for d in new.devices}
        for name in changes.restart + changes.start:
            count = len(supervisor.runners)
            supervisor.start(devices[name], phase=poll_phase(count, count + 1))
        if changes.http:
            await self._stop_http()
            await self._start_http()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        config = self.config
        supervisor = self.supervisor
        supervisor.started = self._loop.time()
        outbox = open_outbox(config.buffer, self.log)
        self.delivery = Delivery(outbox, self.metrics.publish_latency.observe)
        self._start_output()
        devices = [d for d in config.devices if d.enabled]
        self.log.info("agent_starting", devices=len(devices), broker=config.mqtt.urls,
                      event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
        for index, device in enumerate(devices):
            supervisor.start(device, phase=poll_phase(index, len(devices)))
        await self._start_http()
        udev = UdevMonitor(supervisor.on_port_added)
        udev.start()
        if self.config_path is not None:
            watcher = ConfigWatcher(self.config_path, lambda: self.reload("file changed"),
                                    self.watch_interval or WATCH_INTERVAL)
            self._spawn(watcher.run())
        await stop.wait()
        await self._shut_down(udev, outbox)

    async def _shut_down(self, udev: UdevMonitor, outbox: Outbox) -> None:
        """Stops everything in order. A step that fails is logged and the next one runs, so
        SIGTERM always ends in `agent_stopped` and exit 0, whatever state the buffer is in."""
        self.log.info("agent_stopping", grace=self.config.shutdown_grace)
        step = self._shutdown_step
        await step("hotplug", udev.stop)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await step("devices", self.supervisor.stop_all)
        drained = await step("drain", self.delivery.drain, self.config.shutdown_grace)

        def disconnected() -> None:
            for runner in self.supervisor.runners.values():
                runner.set_status("disconnected", None)
        await step("statuses", disconnected)
        await step("output", self._stop_output)
        await step("http", self._stop_http)
        kept = await step("buffer", outbox.depth)
        self.log.info("agent_stopped", drained=bool(drained), kept=kept)
        await step("buffer", outbox.close)

    async def _shutdown_step(self, name: str, func: Callable[..., Any], *args: Any) -> Any:
        try:
            result = func(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        except Exception as exc:
            self.log.error("shutdown_step_failed", step=name, error=repr(exc))
            return None
