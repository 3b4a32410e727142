"""Test support: brokers, subscribers, simulators in a thread, the agent as a subprocess.

Everything here is real: a Mosquitto process, paho clients, pty and TCP simulators. Waits are
polls against a deadline on a condition, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent_simulators import runner, spec

REPO = Path(__file__).resolve().parents[1]
EDGE_AGENT = [sys.executable, "-m", "edge_agent"]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.01) -> Any:
    """Polls `predicate` until it returns something truthy; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Subscriber:
    """A paho client that records every message it receives, with receipt times."""

    def __init__(self, port: int, topics: str | list[str] = "#", client_id: str | None = None):
        self.messages: list[tuple[str, bytes, float, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"test-sub-{time.time_ns()}")
        self._subscribed = threading.Event()
        topics = [topics] if isinstance(topics, str) else topics
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("subscriber did not get SUBACK")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, time.time(), message.retain))

    def on(self, topic_suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _, _ in self.messages if t.endswith(topic_suffix)]

    def json_on(self, topic_suffix: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(topic_suffix)]

    def wait_for(self, topic_suffix: str, count: int = 1, timeout: float = 15.0,
                 where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            found = [m for m in self.json_on(topic_suffix) if where is None or where(m)]
            return found if len(found) >= count else None
        return wait_until(ready, timeout, f"{count} message(s) on *{topic_suffix}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class SimulatorThread:
    """Runs simulators from a spec (dict or YAML text) on an event loop in a thread."""

    def __init__(self, sim_spec: dict[str, Any] | None = None) -> None:
        self.spec = spec.SimSpec.model_validate(sim_spec) if sim_spec else spec.load(None)
        self.loop = asyncio.new_event_loop()
        self.sims: list[runner.Running] = []
        started = threading.Event()
        self.error: BaseException | None = None

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.sims = self.loop.run_until_complete(runner.start(self.spec))
            except BaseException as exc:
                self.error = exc
            started.set()
            if self.error is None:
                self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        started.wait(10)
        if self.error:
            raise self.error

    @property
    def env(self) -> dict[str, str]:
        return runner.agent_env(self.sims)

    def by_name(self, name: str) -> runner.Running:
        return next(s for s in self.sims if s.name == name)

    def agent_config(self, broker_url: str, usb: bool = False, **top: Any) -> dict[str, Any]:
        """The agent config for these simulators. Simulated USB devices are left out unless
        `usb` (they need the agent started with `self.env`)."""
        config = runner.agent_config(self.sims, broker_url)
        if not usb:
            config["devices"] = [d for d in config["devices"] if d["driver"] != "usb"]
        config.setdefault("http", {"enabled": False})
        config.update(top)
        return config

    def call(self, func: Callable[[], Any]) -> Any:
        """Runs func on the simulators' loop (their state is not thread-safe)."""
        future: Any = asyncio.run_coroutine_threadsafe(_as_coro(func), self.loop)
        return future.result(10)

    def close(self) -> None:
        def shutdown() -> None:
            for sim in self.sims:
                sim.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(10)


async def _as_coro(func: Callable[[], Any]) -> Any:
    return func()


class AgentProcess:
    """`edge-agent run -c FILE|DIR` as a subprocess, its stdout captured to a file."""

    def __init__(self, config: dict[str, Any] | Path, tmp_path: Path,
                 env: dict[str, str] | None = None, name: str = "agent") -> None:
        if isinstance(config, Path):  # a config file or directory written by the test
            self.config_path = config
        else:
            self.config_path = tmp_path / f"{name}.yaml"
            self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen([*EDGE_AGENT, "run", "-c", str(self.config_path)],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                        cwd=REPO)
        return self

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"raw": line})
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGE_AGENT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)
