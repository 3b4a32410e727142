"""What one flush of the durable outbox costs, statement by statement.

The rig's flush commits a few polls' messages at once (`delivery.MAX_HOLD_POLLS`) and deletes
the rows the broker acknowledged since the last one. This drives the real `SqliteOutbox`
through that cycle (seq, append, flush, fetch, ack) with messages the size of the standard
workload's (about 3.1 KB) and prints the main thread's CPU per flush and per SQL statement,
so a change to the commit can be judged without the rig's noise. The statements are timed
through a thin wrapper around the connection, which adds about a microsecond each.

    .venv/bin/python bench/bench_commit.py [--polls 5] [--flushes 5000] [--devices 10]
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_agent.buffer import SqliteOutbox

PAYLOAD = bytes(range(48, 58)) * 310  # 3,100 bytes, as the rig's 47-reading telemetry


class TimedConnection:
    """The outbox's connection, with the main thread's CPU per statement kind added up."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()

    def _timed(self, kind: str, call: Any, *args: Any) -> Any:
        start = time.thread_time()
        result = call(*args)
        self.cpu[kind] += time.thread_time() - start
        self.calls[kind] += 1
        return result

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(" ".join(sql.split()[:2]), self.db.execute, sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed("executemany " + " ".join(sql.split()[:3]),
                           self.db.executemany, sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=5, help="messages per flush")
    parser.add_argument("--flushes", type=int, default=5000)
    parser.add_argument("--devices", type=int, default=10)
    args = parser.parse_args()
    devices = [f"plc{n}" for n in range(1, args.devices + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        outbox = SqliteOutbox(Path(tmp) / "buffer.sqlite3", 500_000_000)
        cursor, turn = 0, 0

        def flush_cycle() -> None:
            nonlocal cursor, turn
            for _ in range(args.polls):
                device = devices[turn % len(devices)]
                turn += 1
                seq = outbox.next_seq(device)
                outbox.append(device, seq, f"edge/bench-node/{device}/telemetry", PAYLOAD)
            outbox.flush()
            rows = outbox.fetch(cursor, 1000)
            if rows:
                cursor = rows[-1].id
                outbox.ack([row.id for row in rows])

        for _ in range(1000):  # past the file's growth: pages come from the freelist
            flush_cycle()
        start = time.thread_time()
        for _ in range(args.flushes):
            flush_cycle()
        whole = (time.thread_time() - start) / args.flushes
        timed = TimedConnection(outbox._db)  # type: ignore[arg-type]
        outbox._db = timed  # type: ignore[assignment]
        for _ in range(args.flushes):
            flush_cycle()
        outbox._db = timed.db
        outbox.close()
    print(f"{args.polls} messages of {len(PAYLOAD)} bytes a flush, {args.flushes} flushes: "
          f"{whole * 1e6:.1f} us main-thread CPU a flush (seq, append, commit, fetch, ack)")
    for kind, cpu in sorted(timed.cpu.items(), key=lambda item: -item[1]):
        print(f"  {kind:32s} {cpu / timed.calls[kind] * 1e6:7.1f} us  "
              f"x{timed.calls[kind] / args.flushes:.0f} a flush")


if __name__ == "__main__":
    main()
