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
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from edge_agent import config_source, fleet, logs, outputs, tasks
from edge_agent.config import AgentConfig, HttpConfig
from edge_agent.conflict import NodeIdentity
from edge_agent.delivery import Delivery
from edge_agent.downlink import Downlink
from edge_agent.errors import ConfigError, StartupError
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
                 watch_interval: float | None = None, config_hash: str | None = None,
                 config_signature: tuple[Any, ...] | None = None) -> None:
        self.node = node_name(config.node)
        self.config = fleet.for_node(config, self.node)
        self.config_path = config_path
        self.watch_interval = watch_interval
        #: the config files' signature when they were read (fleet.load_node): the watcher's
        #: baseline, so a change while the agent starts is still noticed
        self.config_signature = config_signature
        #: this process as a node of a fleet: instance id, config hash, name conflicts
        self.identity = NodeIdentity(self.node, config.mqtt.reconnect_max,
                                     config_hash or fleet.config_hash(self.config))
        self.identity.on_change.append(self._node_changed)
        self.log = logs.get("edge_agent.agent")
        self.metrics = AgentMetrics(self._snapshot_from_thread)
        self.supervisor = Supervisor(
            deliver=self._deliver, on_status=self._device_status,
            poll_timer=lambda name: self.metrics.poll_duration.labels(name).observe,
            on_stopped=self._device_stopped)
        self.output: Output | None = None
        self.downlink: Downlink | None = None
        #: downlink messages refused at the boundary, by reason; outlives a restarted output
        self.downlink_rejected: Counter[str] = Counter()
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
        output = outputs.create(self.config, self.node, self.supervisor, delivery,
                                self.identity)
        self.output = output
        self.downlink = Downlink(output, self.supervisor.view, self.downlink_rejected)
        delivery.start(self.config.mqtt, client_id(self.config.node), output,
                       self.downlink.on_message, watch=self.identity)

    def _node_changed(self) -> None:
        """The node status's content changed (devices, config, a conflict): say so."""
        if self.output is not None:
            self.output.node_changed()

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
                             reload=self.reload_stats,
                             downlink_rejected=self.downlink_rejected,
                             identity=self.identity)

    def _snapshot_from_thread(self) -> dict[str, Any] | None:
        return snapshot.call_in_loop(self._loop, self.snapshot, SNAPSHOT_TIMEOUT)

    def loop_alive(self, timeout: float | None = None) -> bool:
        """True if the event loop ran a callback within `timeout` (from another thread)."""
        answer = snapshot.call_in_loop(self._loop, lambda: True,
                                       HEALTH_TIMEOUT if timeout is None else timeout)
        return bool(answer)

    def _bind_http(self, http: HttpConfig) -> HttpServer | None:
        """A server holding `http.listen` (None when disabled); OSError when it cannot."""
        if not http.enabled:
            return None
        server = HttpServer(http.listen, self.loop_alive, self._snapshot_from_thread,
                            self.metrics.exposition)
        server.bind()
        return server

    async def _serve_http(self, server: HttpServer | None) -> None:
        if server is not None:
            await asyncio.get_running_loop().run_in_executor(None, server.start)
            self.http = server

    async def _reload_http(self, old: HttpConfig, new: HttpConfig) -> str | None:
        """Moves the server to `new`; if the new address cannot be taken, the old listener
        stays (the probes keep reaching this agent) and the problem is returned."""
        if not new.enabled:
            await self._stop_http()
            return None
        try:
            server = self._bind_http(new)
        except OSError as exc:
            running = self.http
            if running is None or running.port != int(new.listen.rpartition(":")[2]):
                return _listen_problem(new.listen, exc)  # the running listener stays
            # The running listener holds that very port (0.0.0.0:7070 -> 127.0.0.1:7070):
            # let go of it, and take it back if the new address still cannot be had.
            address = f"{running.address.rpartition(':')[0]}:{running.port}"
            await self._stop_http()
            try:
                server = self._bind_http(new)
            except OSError as exc:
                problem = _listen_problem(new.listen, exc)
                try:
                    await self._serve_http(self._bind_http(old.model_copy(
                        update={"listen": address})))
                except OSError as again:
                    self.log.error("http_failed", listen=address,
                                   error=again.strerror or str(again))
                return problem
        await self._stop_http()
        await self._serve_http(server)
        return None

    async def _stop_http(self) -> None:
        if self.http is not None:
            server, self.http = self.http, None
            await asyncio.get_running_loop().run_in_executor(None, server.stop)

    # -- hot reload ----------------------------------------------------------------------
    def request_reload(self, reason: str = "SIGHUP") -> None:
        """Schedules a reload (safe to call from a signal handler on the loop)."""
        self._spawn(self.reload(reason))

    async def reload(self, reason: str = "requested", only_if_changed: bool = False) -> bool:
        """Re-reads the config file and applies only what changed.

        An invalid file keeps the running config: the problems are logged and counted
        (`edge_agent_config_reload_failures_total`), nothing is stopped. `only_if_changed`
        (the file watcher): files that give this node the config it runs are no reload (a
        fleet ConfigMap's swap for another node's file, a SIGHUP's file seen changed again,
        `touch`); they only show the files valid again, if a reload had failed.
        """
        if self.config_path is None:
            self.log.warning("config_reload_skipped", reason=reason, error="no config file")
            return False
        async with self._reload_lock:
            stats = self.reload_stats
            # before reading, as at start-up: the watcher then reacts to changes after it
            self.config_signature = fleet.signature(self.config_path, self.node)
            try:  # in a thread: a big file or a refused bomb must not stall the loop
                # (a fleet directory: the shared file and this node's, see edge_agent.fleet)
                loaded = await asyncio.to_thread(fleet.load_node, self.config_path)
            except Exception as exc:  # a third-party driver's validator too: not fatal
                stats["attempts"] += 1
                stats["last_ts"] = time.time()
                problems = (exc.problems if isinstance(exc, ConfigError)
                            else [repr(exc)[:500]])
                self._reload_refused(reason, "config_reload_failed", problems)
                return False
            self.config_signature = loaded.signature  # this node's files, if it changed
            if only_if_changed and loaded.hash == self.identity.config_hash:
                self.log.debug("config_unchanged", reason=reason, config=loaded.hash)
                stats["last_ok"], stats["last_error"] = 1, None
                return True
            stats["attempts"] += 1
            stats["last_ts"] = time.time()
            new = loaded.config
            refusal = config_source.reload_refusal(self.config, new)
            if refusal is not None:
                self._reload_refused(reason, "config_reload_refused", [refusal])
                return False
            changes = plan(self.config, new)
            self.log.info("config_reloaded", reason=reason, config=loaded.hash,
                          **changes.summary())
            problem = await self._apply(new, changes)
            if problem is not None:
                stats["failures"] += 1
                stats["last_ok"] = 0
                stats["last_error"] = problem
                return False
            self.identity.config_hash = loaded.hash
            self._node_changed()
            stats["last_ok"] = 1
            stats["last_error"] = None
            return True

    def _reload_refused(self, reason: str, event: str, problems: list[str]) -> None:
        """Counts and logs a reload that keeps the running config."""
        stats = self.reload_stats
        stats["failures"] += 1
        stats["last_ok"] = 0
        stats["last_error"] = "; ".join(problems)
        self.log.error(event, reason=reason, path=str(self.config_path), problems=problems,
                       kept="the running config")

    async def _apply(self, new: AgentConfig, changes: ReloadPlan) -> str | None:
        """Applies what changed; returns the problem of a part it had to keep as it was."""
        if changes.needs_restart:
            self.log.warning("config_needs_restart", settings=changes.needs_restart,
                             note="kept the running values until the agent restarts")
            new = new.model_copy(update={"buffer": self.config.buffer})
        supervisor = self.supervisor
        old_http = self.config.http
        for name in changes.stop + changes.restart:
            await supervisor.stop(name, removed=name in changes.stop)
        self.config = new
        if changes.log_level:
            logs.configure(new.log_level, self.node)
        if changes.mqtt:
            await self._stop_output()
            self.node = node_name(new.node)
            self.identity.configure(self.node, new.mqtt.reconnect_max)
            self._start_output()
        devices = {d.name: d for d in new.devices}
        for name in changes.restart + changes.start:
            count = len(supervisor.runners)
            supervisor.start(devices[name], phase=poll_phase(count, count + 1))
        if changes.http:
            problem = await self._reload_http(old_http, new.http)
            if problem is not None:
                # the running listener stays, and so does its setting: a later reload retries
                self.config = new.model_copy(update={"http": old_http})
                self.log.error("http_reload_failed", listen=new.http.listen, error=problem,
                               kept=self.http.address if self.http is not None else None)
                return problem
        return None

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = tasks.spawn(coroutine, getattr(coroutine, "__qualname__", "background"),
                           self.log)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        tasks.install(self._loop)  # no raw traceback from anything on this loop
        config = self.config
        try:  # first of all: an agent that cannot answer its probes must not start
            http = self._bind_http(config.http)
        except OSError as exc:
            problem = _listen_problem(config.http.listen, exc)
            self.log.error("http_failed", listen=config.http.listen, error=problem)
            raise StartupError(problem) from None
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
        await self._serve_http(http)
        udev = UdevMonitor(supervisor.on_port_added)
        udev.start()
        if (config_path := self.config_path) is not None:
            watcher = ConfigWatcher(lambda: fleet.watched_paths(config_path, self.node),
                                    lambda: self.reload("file changed", only_if_changed=True),
                                    self.watch_interval or WATCH_INTERVAL,
                                    read_at=lambda: self.config_signature)
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


def _listen_problem(listen: str, exc: OSError) -> str:
    return f"cannot listen on {listen} (http.listen): {exc.strerror or exc}"
