"""Sparkplug encoding cost: CPU per outbox row turned into a DDATA at publish time.

Uses the standard workload's message shape (one device poll of 50 registers, as the JSON row
the outbox stores) and the real session; only the MQTT client is replaced by a counter, so
the figure is the encoder's own cost (JSON parse + report by exception + protobuf build).

    .venv/bin/python bench/bench_sparkplug.py [--rows 20000] [--changed 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from types import SimpleNamespace

from edge_agent import logs
from edge_agent.model import PointSpec, now_ms
from edge_agent.outbox import Row
from edge_agent.sparkplug.session import DeviceView, SparkplugSession

REGISTERS = 50


class _Publisher:
    """Counts what the session publishes (births) instead of sending it."""

    def __init__(self) -> None:
        self.subscriptions: list[str] = []
        self.on_connected: list = []
        self.on_message = None
        self.encoder = None
        self.connected = asyncio.Event()
        self.sent = 0

    def publish_now(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.sent += 1


def rows(count: int, changed: float) -> list[Row]:
    base = now_ms() + 10_000
    step = max(1, round(1 / changed)) if changed > 0 else None
    out = []
    for i in range(count):
        readings = [{"metric": f"r{j}", "value": round(20 + (i if step and j % step == 0
                                                              else 0) * 0.1, 1),
                     "ts": base + i, "quality": "good", "unit": "Cel"}
                    for j in range(REGISTERS)]
        payload = json.dumps({"node": "n", "device": "dev", "seq": i + 1,
                              "readings": readings}).encode()
        out.append(Row(i + 1, "dev", i + 1, "edge/n/dev/telemetry", payload))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--changed", type=float, default=1.0,
                        help="fraction of the registers that change every poll")
    args = parser.parse_args()
    logs.configure("warning", "bench")
    publisher = _Publisher()
    state = SimpleNamespace(state="connected", last_values={})
    points = [PointSpec(f"r{j}", "Cel", 0.1) for j in range(REGISTERS)]
    view = DeviceView("dev", points, {p.name: "int16" for p in points}, state)
    session = SparkplugSession(publisher=publisher, group="g", node="n",
                               devices=lambda: [view])
    session.attach()
    session.birth()
    data = rows(args.rows, args.changed)
    encode = session.encode
    size = 0
    started = time.process_time()
    for row in data:
        message = encode(row)
        if message is not None:
            size += len(message[1])
    cpu = time.process_time() - started
    readings = args.rows * REGISTERS
    json_bytes = sum(len(r.payload) for r in data)
    print(f"rows: {args.rows} x {REGISTERS} readings, {args.changed:.0%} changing per poll")
    print(f"encode: {cpu / args.rows * 1e6:.1f} us CPU per row, "
          f"{cpu / readings * 1e6:.2f} us per reading")
    print(f"size: DDATA {size / args.rows:.0f} B per row vs JSON {json_bytes / args.rows:.0f} B")


if __name__ == "__main__":
    main()
