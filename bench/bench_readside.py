"""The read side alone: the rig's devices polled by the agent's runners, delivery left out.

Runs the shared peer rig's Modbus simulator (../shared/peer-bench/sim_modbus.py, pymodbus
3.9.2 in its venv, as run_edge_agent.sh makes it) and, in this process on uvloop, the
agent's `Supervisor` with the rig's device config (D units x one uint64 `ts_ms` + R-4
uint16 points every P ms, on one Modbus TCP port) and the agent's poll-duration histogram.
`deliver` only builds the JSON telemetry payload, so what is measured is the driver, the
normaliser, the supervision and the payload: no outbox, no MQTT. Printed: this process's
CPU per reading and per poll over the measured window (the simulator is another process).

    .venv/bin/python bench/bench_readside.py [-D 10] [-R 50] [-P 100] [-T 20] [-W 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import uvloop

from edge_agent.config import AgentConfig, validate
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.outputs.json import JsonTopics
from edge_agent.supervision.device import poll_phase
from edge_agent.supervision.supervisor import Supervisor

RIG = Path(__file__).resolve().parents[2] / "shared" / "peer-bench"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def config(devices: int, registers: int, poll_ms: int, port: int) -> AgentConfig:
    points: list[dict[str, Any]] = [
        {"name": "ts_ms", "table": "holding", "address": 0, "type": "uint64", "order": "ABCD"}]
    points += [{"name": f"r{a}", "table": "holding", "address": a, "type": "uint16"}
               for a in range(4, registers)]
    return validate({"devices": [
        {"name": f"plc{u}", "driver": "modbus", "port": f"tcp://127.0.0.1:{port}", "unit": u,
         "interval": poll_ms / 1000, "points": points} for u in range(1, devices + 1)]})


async def measure(conf: AgentConfig, warmup: float, seconds: float) -> tuple[int, int, float]:
    topics, counts = JsonTopics("edge", "bench-node"), {"readings": 0, "polls": 0}

    def deliver(device: str, readings: list[dict[str, Any]], ts_ms: int) -> None:
        topics.telemetry_payload(device, counts["polls"], readings)
        counts["readings"] += len(readings)
        counts["polls"] += 1

    metrics = AgentMetrics(lambda: None)
    supervisor = Supervisor(deliver=deliver, on_status=lambda runner: None,
                            poll_timer=lambda name: metrics.poll_duration.labels(name).observe,
                            on_stopped=lambda name, removed: None)
    supervisor.started = asyncio.get_running_loop().time()
    for index, device in enumerate(conf.devices):
        supervisor.start(device, phase=poll_phase(index, len(conf.devices)))
    await asyncio.sleep(warmup)
    readings, polls, cpu = counts["readings"], counts["polls"], cpu_seconds()
    await asyncio.sleep(seconds)
    cpu = cpu_seconds() - cpu
    readings, polls = counts["readings"] - readings, counts["polls"] - polls
    await supervisor.stop_all()
    return readings, polls, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-D", type=int, default=10)
    parser.add_argument("-R", type=int, default=50)
    parser.add_argument("-P", type=int, default=100)
    parser.add_argument("-T", type=float, default=20.0)
    parser.add_argument("-W", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=15020)
    parser.add_argument("--sim-python", default=os.environ.get(
        "PEERS_VENV", "/tmp/peers-venv") + "/bin/python")
    args = parser.parse_args()
    sim = subprocess.Popen(
        [args.sim_python, str(RIG / "sim_modbus.py"), "--host", "127.0.0.1", "--port",
         str(args.port), "--devices", str(args.D), "--registers", str(args.R)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline()
        if not line.startswith("READY"):
            print(f"simulator did not start: {line!r}", file=sys.stderr)
            return 1
        readings, polls, cpu = uvloop.run(
            measure(config(args.D, args.R, args.P, args.port), args.W, args.T))
    finally:
        sim.terminate()
        sim.wait()
    expected = args.D * (1000 / args.P) * args.T
    print(f"read side: {1e6 * cpu / max(readings, 1):.2f} us CPU per reading, "
          f"{1e6 * cpu / max(polls, 1):.1f} us per poll; {polls} polls "
          f"({polls / expected:.1%} of {expected:.0f}), {readings} readings in {args.T:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
