"""The standard workload: 10 Modbus TCP devices x 50 holding registers every 100 ms.

Simulators run in a subprocess of their own, the agent in another (`edge-agent run`), the
broker is a local Mosquitto; this process subscribes and measures. Printed: readings/s
delivered against expected, loss (seq gaps), end-to-end latency (read timestamp to
subscriber receipt) p50/p99, the agent's CPU per reading and per 1000 readings (from
/proc/<pid>/stat), its peak RSS (VmHWM), and its idle CPU with the same devices polled
every 10 s.

    .venv/bin/python bench/bench_standard.py [--seconds 30] [--durable] [--devices 10]
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
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent_simulators.broker import Mosquitto, wait_for_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def sim_spec(devices: int, registers: int, base_port: int) -> dict:
    return {"devices": [
        {"name": f"plc-{i:02d}", "kind": "modbus-tcp", "listen": f"127.0.0.1:{base_port + i}",
         "interval": 0.1, "units": [{"unit": 1, "registers": [
             {"name": f"r{a:02d}", "address": a, "type": "uint16",
              "value": {"counter": {"start": a, "rate": 10}}} for a in range(registers)]}]}
        for i in range(devices)]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Collector:
    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.readings = 0
        self.seqs: dict[str, list[int]] = {}
        self.recording = False
        self.closed = False
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-collector")
        self.client.on_connect = lambda c, *_: c.subscribe("edge/+/+/telemetry", qos=1)
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_message(self, client, userdata, message) -> None:
        now_ms = time.time() * 1000
        body = json.loads(message.payload)
        with self.lock:
            if self.closed:
                return
            self.seqs.setdefault(body["device"], []).append(body["seq"])
            if not self.recording:
                return
            self.readings += len(body["readings"])
            self.latencies.append(now_ms - body["readings"][0]["ts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--registers", type=int, default=50)
    parser.add_argument("--durable", action="store_true", help="SQLite buffer on")
    parser.add_argument("--idle-seconds", type=float, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    broker = Mosquitto().start()
    base_port = 25000 + os.getpid() % 2000 * 10
    (work / "sims.yaml").write_text(yaml.safe_dump(sim_spec(args.devices, args.registers,
                                                            base_port)))
    sims = subprocess.Popen([sys.executable, "-m", "edge_agent", "simulate", "-c",
                             str(work / "sims.yaml"), "--broker", broker.url],
                            stdout=subprocess.PIPE, text=True)
    lines = []
    for line in sims.stdout:
        lines.append(line)
        if line.startswith("devices:"):
            break
    for i in range(args.devices):
        wait_for_port(base_port + i)
    config = {"node": "bench", "mqtt": {"url": broker.url, "qos": 1},
              "http": {"enabled": False}, "log_level": "warning",
              "devices": [{"name": f"plc-{i:02d}", "driver": "modbus",
                           "port": f"tcp://127.0.0.1:{base_port + i}", "interval": 0.1,
                           "timeout": 1.0,
                           "points": [{"name": f"r{a:02d}", "address": a, "type": "uint16",
                                       "scale": 0.1, "unit": "1"}
                                      for a in range(args.registers)]}
                          for i in range(args.devices)]}
    if args.durable:
        config["buffer"] = {"path": str(work / "buffer.sqlite3")}
    (work / "agent.yaml").write_text(yaml.safe_dump(config))

    collector = Collector(broker.port)
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "-c",
                              str(work / "agent.yaml")], stdout=subprocess.DEVNULL)
    time.sleep(args.warmup)  # a benchmark, not a test: let imports and connects settle
    cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
    collector.recording = True
    time.sleep(args.seconds)
    collector.recording = False
    cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
    rss = peak_rss_mib(agent.pid)
    agent.send_signal(signal.SIGTERM)
    agent.wait(30)
    collector.closed = True

    # idle: the same devices polled every 10 s
    for device in config["devices"]:
        device["interval"] = 10.0
    (work / "idle.yaml").write_text(yaml.safe_dump(config))
    idle = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "-c",
                             str(work / "idle.yaml")], stdout=subprocess.DEVNULL)
    time.sleep(args.warmup)
    idle0 = cpu_seconds(idle.pid)
    time.sleep(args.idle_seconds)
    idle_cpu = (cpu_seconds(idle.pid) - idle0) / args.idle_seconds
    idle.send_signal(signal.SIGTERM)
    idle.wait(30)

    sims.send_signal(signal.SIGTERM)
    sims.wait(10)
    broker.stop()

    elapsed = t1 - t0
    expected = args.devices * args.registers / 0.1
    rate = collector.readings / elapsed
    gaps = dups = 0
    for seqs in collector.seqs.values():
        seqs = sorted(seqs)
        dups += len(seqs) - len(set(seqs))
        gaps += (seqs[-1] - seqs[0] + 1) - len(set(seqs))
    lat = sorted(collector.latencies)
    cpu_per_reading = (cpu1 - cpu0) / max(collector.readings, 1)
    print(f"workload           {args.devices} devices x {args.registers} registers / 100 ms"
          f"{' (durable buffer)' if args.durable else ''}")
    print(f"readings/s         {rate:,.0f} delivered of {expected:,.0f} expected "
          f"({100 * rate / expected:.1f}%)")
    print(f"seq gaps / dups    {gaps} / {dups}")
    print(f"latency p50/p99    {statistics.median(lat):.1f} ms / "
          f"{lat[int(len(lat) * 0.99) - 1]:.1f} ms  (read ts to subscriber)")
    print(f"agent CPU          {cpu_per_reading * 1e6:.2f} us/reading, "
          f"{cpu_per_reading * 1000:.4f} CPU-s per 1000 readings, "
          f"{100 * (cpu1 - cpu0) / elapsed:.1f}% of a core")
    print(f"agent peak RSS     {rss:.1f} MiB")
    print(f"idle CPU           {100 * idle_cpu:.2f}% of a core (same devices every 10 s)")


if __name__ == "__main__":
    main()
