"""The agent at run time: one supervised task per device, the outbox and the publisher.

Devices poll on a monotonic schedule without drift: a poll that overruns its interval skips
the ticks it missed instead of piling them up. A device that fails is reconnected with
exponential backoff and jitter; its status is published retained on every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edge_agent import logs, registry
from edge_agent.backoff import Backoff
from edge_agent.config import AgentConfig, DeviceConfig
from edge_agent.driver import Driver
from edge_agent.errors import DeviceDisconnected, DeviceError, DriverLoadError
from edge_agent.identity import client_id, node_name
from edge_agent.model import Sample
from edge_agent.mqtt import MqttPublisher
from edge_agent.normalize import Normalizer
from edge_agent.outbox import Outbox, open_outbox
from edge_agent.topics import JsonTopics

#: consecutive failed polls after which the transport is torn down and reconnected
FAILED_POLLS_BEFORE_RECONNECT = 3


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
        self.normalizer = Normalizer(driver.points() if driver else [])
        self.topic = agent.topics.telemetry(config.name)

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
        backoff = Backoff(initial=min(0.5, self.config.interval), maximum=30.0)
        driver = self.driver
        try:
            while True:
                try:
                    await asyncio.wait_for(driver.connect(), self.config.timeout * 5)
                    backoff.reset()
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
                await asyncio.sleep(backoff.next())
        finally:
            with contextlib.suppress(Exception):
                await driver.close()

    def _report_failure(self, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        self.log.warning("device_failed", error=text)
        gone = self.state.state == "connected" or isinstance(exc, DeviceDisconnected)
        self.set_status("disconnected" if gone else "error", text)

    async def _poll(self, driver: Driver) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        emit = self.agent.emit
        failures = 0
        # The first poll runs at once; later ones fall on this device's phase of the interval,
        # so devices with the same interval are spread over it instead of all firing (and all
        # queueing for the publisher) at the same instant.
        anchor = self.agent.started + self.phase * interval
        next_tick = None
        while True:
            try:
                sample = await driver.poll()
            except DeviceDisconnected:
                raise  # the transport is gone (device unplugged): reconnect now, not in 3 polls
            except DeviceError as exc:
                failures += 1
                self.state.errors[exc.kind] += 1
                self.log.warning("poll_failed", error=str(exc), kind=exc.kind)
                self.set_status("error", str(exc))
                if failures >= FAILED_POLLS_BEFORE_RECONNECT:
                    raise
            else:
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
        async for sample in driver.stream():
            emit(self, sample)


class Agent:
    """Wires config, devices, outbox and publisher; `run()` until the stop event is set."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node = node_name(config.node)
        self.topics = JsonTopics(config.mqtt.topic_prefix, self.node)
        self.log = logs.get("edge_agent.agent")
        self.runners: dict[str, DeviceRunner] = {}
        self.outbox: Outbox | None = None
        self.publisher: MqttPublisher | None = None
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = 0.0  # loop time at start: the anchor of every device's poll phase

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
        outbox.append(name, seq, runner.topic, self.topics.telemetry_payload(name, seq, readings))
        state.last_values = {r["metric"]: r for r in readings}
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Commits everything appended in this loop iteration at once, then publishes it."""
        self._flush_scheduled = False
        self.outbox.flush()
        self.publisher.pump()

    # -- status --------------------------------------------------------------------------
    def publish_device_status(self, runner: DeviceRunner) -> None:
        if self.publisher is not None:
            state = runner.state
            self.publisher.publish_state(
                self.topics.device_status(state.name),
                self.topics.device_status_payload(state.state, state.error))

    def _on_broker_connected(self) -> None:
        self.publisher.publish_state(self.topics.node_status,
                                     self.topics.node_status_payload("online"))
        for runner in self.runners.values():
            self.publish_device_status(runner)

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self.started = self._loop.time()
        config = self.config
        self.outbox = open_outbox(config.buffer, self.log)
        will = (self.topics.node_status, self.topics.node_status_payload("offline"))
        self.publisher = MqttPublisher(config.mqtt, client_id(self.node), self.outbox, will)
        self.publisher.on_connected.append(self._on_broker_connected)
        self.runners = {d.name: self._make_runner(d) for d in config.devices if d.enabled}
        for index, runner in enumerate(self.runners.values()):
            runner.phase = index / len(self.runners)
        self.log.info("agent_starting", devices=len(self.runners), broker=config.mqtt.urls)
        publisher_task = asyncio.create_task(self.publisher.run(), name="mqtt")
        device_tasks = [asyncio.create_task(r.run(), name=f"device-{n}")
                        for n, r in self.runners.items()]
        await stop.wait()
        self.log.info("agent_stopping", grace=config.shutdown_grace)
        for task in device_tasks:
            task.cancel()
        await asyncio.gather(*device_tasks, return_exceptions=True)
        self._flush()
        drained = await self.publisher.drain(config.shutdown_grace)
        for runner in self.runners.values():
            runner.set_status("disconnected", None)
        await self.publisher.stop((self.topics.node_status,
                                   self.topics.node_status_payload("offline")))
        publisher_task.cancel()
        await asyncio.gather(publisher_task, return_exceptions=True)
        self.log.info("agent_stopped", drained=drained, kept=self.outbox.depth())
        self.outbox.close()
