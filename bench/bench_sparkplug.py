"""Sparkplug encoding cost: CPU per outbox row turned into a DDATA at publish time.

Uses the standard workload's message shape (one device poll of 50 registers, as the JSON row
the outbox stores) and the real session; only the MQTT client is replaced by a counter, so
the figure is the encoder's own cost (report by exception + protobuf build, plus the JSON
parse for rows the session did not store itself: `--stored` measures rows that went through
its `telemetry()`, as live rows do, the default rows read back from a buffer).

    .venv/bin/python bench/bench_sparkplug.py [--rows 20000] [--changed 1.0] [--stored]
"""

from __future__ import annotations

import argparse
import json
import time

from edge_agent import logs
from edge_agent.model import PointSpec, now_ms
from edge_agent.outbox import Row
from edge_agent.outputs.base import FixedView
from edge_agent.outputs.sparkplug.session import SparkplugSession
from edge_agent.transport.base import Message

REGISTERS = 50


class _Link:
    """Counts what the session publishes (births) instead of sending it."""

    def __init__(self) -> None:
        self.sent = 0

    def is_connected(self) -> bool:
        return True

    def publish_now(self, message: Message) -> None:
        self.sent += 1

    def publish_state(self, topic: str, payload: bytes) -> None:
        self.sent += 1

    def pump(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


class _Directory:
    def __init__(self, view: FixedView) -> None:
        self._view = view

    def views(self) -> list[FixedView]:
        return [self._view]

    def view(self, name: str) -> FixedView | None:
        return self._view if name == self._view.name else None


def readings_of(count: int, changed: float) -> list[list[dict]]:
    base = now_ms() + 10_000
    step = max(1, round(1 / changed)) if changed > 0 else None
    return [[{"metric": f"r{j}", "value": round(20 + (i if step and j % step == 0
                                                       else 0) * 0.1, 1),
              "ts": base + i, "quality": "good", "unit": "Cel"}
             for j in range(REGISTERS)] for i in range(count)]


def rows(polls: list[list[dict]]) -> list[Row]:
    return [Row(i + 1, "dev", i + 1, "edge/n/dev/telemetry",
                json.dumps({"node": "n", "device": "dev", "seq": i + 1,
                            "readings": readings}).encode())
            for i, readings in enumerate(polls)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--changed", type=float, default=1.0,
                        help="fraction of the registers that change every poll")
    parser.add_argument("--stored", action="store_true",
                        help="rows stored through the session (live rows: no JSON parse)")
    args = parser.parse_args()
    logs.configure("warning", "bench")
    points = {f"r{j}": PointSpec(f"r{j}", "Cel", 0.1) for j in range(REGISTERS)}
    view = FixedView("dev", "connected", points=points,
                     point_types={name: "int16" for name in points})
    session = SparkplugSession(link=_Link(), group="g", node="n", devices=_Directory(view))
    session.birth()
    polls = readings_of(args.rows, args.changed)
    data = rows(polls)

    encode = session.encode
    size, cpu, batch = 0, 0.0, 256
    for first in range(0, len(data), batch):
        if args.stored:  # stored through the session just before, as live rows are (untimed)
            for row in data[first:first + batch]:
                session.telemetry(row.device, row.seq, polls[row.seq - 1])
        started = time.process_time()
        for row in data[first:first + batch]:
            message = encode(row)
            if message is not None:
                size += len(message.payload)
        cpu += time.process_time() - started
    readings = args.rows * REGISTERS
    json_bytes = sum(len(r.payload) for r in data)
    print(f"rows: {args.rows} x {REGISTERS} readings, {args.changed:.0%} changing per poll")
    print(f"encode: {cpu / args.rows * 1e6:.1f} us CPU per row, "
          f"{cpu / readings * 1e6:.2f} us per reading")
    print(f"size: DDATA {size / args.rows:.0f} B per row vs JSON {json_bytes / args.rows:.0f} B")


if __name__ == "__main__":
    main()
