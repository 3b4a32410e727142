"""Start-up with a large fleet: 500 configured Modbus TCP devices, how soon is the agent ready?

Simulated units (the project's simulator, `edge-agent simulate`: 4 TCP ports x 125 units, 10
holding registers each) and a local Mosquitto; the agent (`edge-agent run`, durable buffer
on) is started with a config of 500 devices, 10 points each, polled every second. Printed,
in seconds from the agent's process start:

- ready: /readyz answers 200 (config loaded, broker connected, buffer writable);
- all connected: every device has published a status `connected`;
- all publishing: a telemetry message from every one of the 500 devices has arrived;

and the agent's peak RSS (VmHWM) once all are publishing.

    .venv/bin/python bench/bench_startup.py [--devices 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent_simulators.broker import Mosquitto, free_port, wait_for_port  # noqa: E402

UNITS_PER_PORT = 125
REGISTERS = 10


def sim_spec(ports: list[int]) -> dict:
    return {"devices": [
        {"name": f"gw-{i}", "kind": "modbus-tcp", "listen": f"127.0.0.1:{port}",
         "interval": 1.0, "units": [
             {"unit": u, "registers": [{"name": f"r{a}", "address": a, "type": "uint16",
                                        "value": a} for a in range(REGISTERS)]}
             for u in range(1, UNITS_PER_PORT + 1)]}
        for i, port in enumerate(ports)]}


def agent_config(devices: int, ports: list[int], broker_url: str, http_port: int,
                 work: Path) -> dict:
    return {"node": "bench", "mqtt": {"url": broker_url, "qos": 1},
            "buffer": {"path": str(work / "buffer.sqlite3")},
            "http": {"listen": f"127.0.0.1:{http_port}"}, "log_level": "warning",
            "devices": [{"name": f"dev-{n:03d}", "driver": "modbus",
                         "port": f"tcp://127.0.0.1:{ports[n // UNITS_PER_PORT]}",
                         "unit": n % UNITS_PER_PORT + 1, "interval": 1.0,
                         "points": [{"name": f"r{a}", "address": a} for a in range(REGISTERS)]}
                        for n in range(devices)]}


class Watcher:
    """Subscribes to everything; notes when each device was first connected / publishing."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.connected: dict[str, float] = {}
        self.publishing: dict[str, float] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-startup")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=0)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        subscribed.wait(10)

    def on_message(self, client, userdata, message) -> None:
        now = time.monotonic()
        parts = message.topic.split("/")
        if len(parts) < 2 or not message.payload:
            return
        device, kind = parts[-2], parts[-1]
        with self.lock:
            if kind == "telemetry":
                self.publishing.setdefault(device, now)
            elif kind == "status" and json.loads(message.payload).get("state") == "connected":
                self.connected.setdefault(device, now)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def readyz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as answer:
            return answer.status == 200
    except OSError:
        return False


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(devices: int, ports: list[int], broker: Mosquitto, work: Path) -> dict:
    http_port = free_port()
    (work / "agent.yaml").write_text(yaml.safe_dump(
        agent_config(devices, ports, broker.url, http_port, work)))
    (work / "buffer.sqlite3").unlink(missing_ok=True)
    watcher = Watcher(broker.port)
    started = time.monotonic()
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "-c",
                              str(work / "agent.yaml")], stdout=subprocess.DEVNULL)
    ready = None
    deadline = started + 60
    try:
        while time.monotonic() < deadline:
            if ready is None and readyz(http_port):
                ready = time.monotonic() - started
            with watcher.lock:
                done = len(watcher.publishing) >= devices and len(watcher.connected) >= devices
            if ready is not None and done:
                break
            time.sleep(0.02)
        rss = peak_rss_mib(agent.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        watcher.close()
    with watcher.lock:
        connected = sorted(watcher.connected.values())
        publishing = sorted(watcher.publishing.values())
    return {"ready_s": ready,
            "all_connected_s": connected[-1] - started if len(connected) >= devices else None,
            "all_publishing_s": publishing[-1] - started if len(publishing) >= devices else None,
            "devices_publishing": len(publishing), "peak_rss_mib": round(rss, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-startup-"))
    broker = Mosquitto().start()
    ports = [free_port() for _ in range(-(-args.devices // UNITS_PER_PORT))]
    (work / "sims.yaml").write_text(yaml.safe_dump(sim_spec(ports)))
    sims = subprocess.Popen([sys.executable, "-m", "edge_agent", "simulate", "-c",
                             str(work / "sims.yaml"), "--broker", broker.url],
                            stdout=subprocess.DEVNULL)
    try:
        for port in ports:
            wait_for_port(port, 30)
        results = [one_run(args.devices, ports, broker, work) for _ in range(args.runs)]
    finally:
        sims.send_signal(signal.SIGTERM)
        sims.wait(30)
        broker.stop()
    for r in results:
        print(json.dumps(r))

    def span(key: str) -> str:
        values = [r[key] for r in results if r[key] is not None]
        if len(values) < len(results):
            return f"not reached in {len(results) - len(values)} of {len(results)} runs"
        return f"{min(values):.2f}-{max(values):.2f} s (median {statistics.median(values):.2f})"

    print(f"{args.devices} devices, {args.runs} runs, load average {os.getloadavg()[0]:.1f}")
    print(f"  ready (/readyz 200):       {span('ready_s')}")
    print(f"  all connected:             {span('all_connected_s')}")
    print(f"  all publishing:            {span('all_publishing_s')}")
    print(f"  peak RSS:                  {min(r['peak_rss_mib'] for r in results)}-"
          f"{max(r['peak_rss_mib'] for r in results)} MiB")


if __name__ == "__main__":
    main()
