"""What one flush of the durable outbox costs, statement by statement.

The rig's flush commits a few polls' messages at once (`delivery.MAX_HOLD_POLLS`) and deletes
the rows the broker acknowledged since the last one. This drives the real `SqliteOutbox`
through that cycle (seq, append, flush, fetch, ack) with messages the size of the standard
workload's (about 3.1 KB) and prints the main thread's CPU per flush and per SQL statement,
so a change to the commit can be judged without the rig's noise. The statements are timed
through a thin wrapper around the connection, which adds about a microsecond each. It also
prints the bytes this process wrote per flush (`wchar` of /proc/self/io: the WAL and the
checkpoints into the file), which is what a flash card on an edge node wears by.

`--page-size` makes the file with another SQLite page size than the default 4,096 bytes
(the outbox keeps whatever a file has), `--payload-bytes` another message size: together
they show what a page size costs on other workloads than the rig's (docs/performance.md,
"What changed, measured"). `--append-only` measures instead the floor any store has to pay:
the same messages as records (header, topic, payload, CRC32) appended to a plain file with
one `os.write` a flush, nothing acknowledged, compacted or recovered.

    .venv/bin/python bench/bench_commit.py [--polls 5] [--flushes 5000] [--devices 10]
                                           [--payload-bytes 3100] [--page-size 4096]
                                           [--append-only] [--no-journal]

`--no-journal` commits every flush to SQLite (`buffer.journal: false`); by default the
outbox journals its flushes as the agent does (edge_agent.store.journal), and a flush
reaches SQLite only when the journal is a second old.
"""

from __future__ import annotations

import argparse
import collections
import os
import sqlite3
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from edge_agent.buffer import SqliteOutbox

#: 3,100 bytes by default, as the rig's 47-reading telemetry
PAYLOAD_BYTES = 3100


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
    parser.add_argument("--payload-bytes", type=int, default=PAYLOAD_BYTES)
    parser.add_argument("--page-size", type=int, default=0,
                        help="make the file with this SQLite page size (default: SQLite's)")
    parser.add_argument("--no-journal", action="store_true",
                        help="every flush a SQLite commit (buffer.journal: false)")
    parser.add_argument("--append-only", action="store_true",
                        help="a plain file's append instead of the outbox (the floor)")
    args = parser.parse_args()
    payload = bytes(range(48, 58)) * (args.payload_bytes // 10) + b"0" * (args.payload_bytes % 10)
    devices = [f"plc{n}" for n in range(1, args.devices + 1)]
    if args.append_only:
        append_only(args.polls, args.flushes, devices, payload)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.sqlite3"
        if args.page_size:  # fixed by the first write: an empty file in WAL mode
            made = sqlite3.connect(path)
            made.execute(f"PRAGMA page_size={args.page_size}")
            made.execute("PRAGMA journal_mode=WAL")
            made.close()
        outbox = SqliteOutbox(path, 500_000_000, journal=not args.no_journal)
        page_size = outbox._db.execute("PRAGMA page_size").fetchone()[0]  # type: ignore[union-attr]
        cursor, turn = 0, 0

        def flush_cycle() -> None:
            nonlocal cursor, turn
            for _ in range(args.polls):
                device = devices[turn % len(devices)]
                turn += 1
                seq = outbox.next_seq(device)
                outbox.append(device, seq, f"edge/bench-node/{device}/telemetry", payload)
            outbox.flush()
            rows = outbox.fetch(cursor, 1000)
            if rows:
                cursor = rows[-1].id
                outbox.ack([row.id for row in rows])

        for _ in range(1000):  # past the file's growth: pages come from the freelist
            flush_cycle()
        written = _bytes_written()
        start = time.thread_time()
        for _ in range(args.flushes):
            flush_cycle()
        whole = (time.thread_time() - start) / args.flushes
        written = (_bytes_written() - written) / args.flushes
        timed = TimedConnection(outbox._db)  # type: ignore[arg-type]
        outbox._db = timed  # type: ignore[assignment]
        for _ in range(args.flushes):
            flush_cycle()
        outbox._db = timed.db
        outbox.close()
    print(f"{args.polls} messages of {len(payload)} bytes a flush, {args.flushes} flushes, "
          f"{page_size}-byte pages, journal {'off' if args.no_journal else 'on'}: "
          f"{whole * 1e6:.1f} us main-thread CPU a flush (seq, append, "
          f"commit, fetch, ack); {written / 1024:.1f} KiB written a flush")
    for kind, cpu in sorted(timed.cpu.items(), key=lambda item: -item[1]):
        print(f"  {kind:32s} {cpu / timed.calls[kind] * 1e6:7.1f} us  "
              f"x{timed.calls[kind] / args.flushes:.0f} a flush")


def append_only(polls: int, flushes: int, devices: list[str], payload: bytes) -> None:
    """The flush as records appended to a plain file: what no store can go below."""
    header = struct.Struct("<QIQHI")  # id, crc, seq, topic length, payload length
    topics = {device: f"edge/bench-node/{device}/telemetry".encode() for device in devices}
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(Path(tmp) / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        row_id = 0
        start = time.thread_time()
        for flush in range(flushes):
            parts = []
            for _ in range(polls):
                topic = topics[devices[row_id % len(devices)]]
                row_id += 1
                crc = zlib.crc32(payload, zlib.crc32(topic))
                parts += (header.pack(row_id, crc, flush, len(topic), len(payload)), topic,
                          payload)
            os.write(fd, b"".join(parts))
        whole = (time.thread_time() - start) / flushes
        os.close(fd)
    print(f"{polls} messages of {len(payload)} bytes a flush, {flushes} flushes, appended to a "
          f"plain file: {whole * 1e6:.1f} us main-thread CPU a flush")


def _bytes_written() -> int:
    """Bytes this process has handed to write calls so far (the checkpoint thread's too)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))


if __name__ == "__main__":
    main()
