"""`edge-agent demo`: simulators, a broker, the agent and a live view, in one command."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import sys
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import config as config_mod
from edge_agent import logs
from edge_agent.runtime import Agent
from edge_agent.transport.mqtt import parse_url
from edge_agent_simulators.broker import Mosquitto, free_port, mosquitto_available, start_embedded


async def demo(stop: asyncio.Event, broker_url: str | None, duration: float | None,
               local_broker: str = "auto") -> None:
    from edge_agent_simulators import runner, spec

    logs.configure("warning")
    sims = await runner.start(spec.load(None))
    broker: Any = None
    if broker_url is None:
        if local_broker == "mosquitto" or (local_broker == "auto" and mosquitto_available()):
            # detached: Ctrl-C stops the agent first (a clean disconnect), then the broker
            broker = Mosquitto(detached=True).start()
            broker_url = broker.url
            print(f"started mosquitto on {broker_url}")
        else:
            port = free_port()
            broker = await start_embedded(port)
            broker_url = f"mqtt://127.0.0.1:{port}"
            print(f"started the embedded broker on {broker_url}")
    os.environ.update(runner.agent_env(sims))  # the agent runs in this process
    agent_cfg = runner.agent_config(sims, broker_url)
    agent_cfg["http"] = {"enabled": False}
    agent = Agent(config_mod.validate(agent_cfg))
    agent_stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(agent_stop))
    view = LiveView(broker_url, f"{agent.config.mqtt.topic_prefix}/{agent.node}/+/telemetry")
    try:
        if duration:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        else:
            await stop.wait()
    finally:
        view.close()
        agent_stop.set()
        await agent_task
        for sim in sims:
            sim.close()
        if isinstance(broker, Mosquitto):
            broker.stop()
        elif broker is not None:
            await broker.shutdown()


class LiveView:
    """Subscribes to the telemetry and prints each device's latest readings."""

    def __init__(self, url: str, topic: str) -> None:
        host, port, _ = parse_url(url)
        self.latest: dict[str, dict[str, Any]] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"edge-agent-demo-{time.time_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        print(f"live telemetry from {topic} (Ctrl-C to stop)", flush=True)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        body = json.loads(message.payload)
        values = "  ".join(_reading(r) for r in body["readings"])
        print(f"{body['device']:<10} seq={body['seq']:<5} {values}", flush=True)
        sys.stdout.flush()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _reading(reading: dict[str, Any]) -> str:
    value, unit = reading["value"], reading.get("unit")
    if reading["metric"].endswith("_time") and unit == "ms" and isinstance(value, int):
        text = _iso(value)  # an instant published as epoch milliseconds (NMEA gnss_time)
    else:
        text = _fmt(value) + (f" {unit}" if unit else "")
    quality = reading.get("quality", "good")
    return f"{reading['metric']}={text}" + ("" if quality == "good" else f"({quality})")


def _fmt(value: Any) -> str:
    """Two decimals for floats without a `-0.00`, and JSON's true/false/null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.2f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    return str(value)


def _iso(epoch_ms: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return str(epoch_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
