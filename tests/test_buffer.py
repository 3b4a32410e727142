"""The SQLite outbox on a real file: durability, order, seq, limits, and a disk that fails."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from edge_agent.buffer import SqliteOutbox
from edge_agent.outbox import MemoryOutbox, open_outbox


class LogSink:
    """Collects structured log calls (event name and fields) for assertions."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for _, event, fields in self.lines if event == name]


def _noise(size: int) -> str:
    """Padding that compresses about as badly as varied telemetry (backlogs are stored
    compressed, so 'x' * size would hardly take any room)."""
    return secrets.token_hex(size)[:size]


def fill(outbox: Any, device: str, count: int, size: int = 100) -> list[int]:
    ids = []
    for _ in range(count):
        seq = outbox.next_seq(device)
        ids.append(outbox.append(device, seq, f"edge/n/{device}/telemetry",
                                 json.dumps({"seq": seq, "pad": _noise(size)}).encode()))
    outbox.flush()
    return ids


def test_nothing_is_fetchable_before_flush_commits_it(tmp_path):
    outbox = SqliteOutbox(tmp_path / "b.sqlite3", 1 << 20)
    outbox.append("a", outbox.next_seq("a"), "t", b"x")
    assert outbox.fetch(0, 10) == [] and outbox.depth() == 1
    outbox.flush()
    assert [row.seq for row in outbox.fetch(0, 10)] == [1]


def test_unacknowledged_rows_replay_in_append_order_after_reopen(tmp_path):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 20)
    for _ in range(5):
        fill(outbox, "a", 1)
        fill(outbox, "b", 1)
    first_four = [row.id for row in outbox.fetch(0, 4)]
    outbox.ack(first_four)
    outbox.close()

    reopened = SqliteOutbox(path, 1 << 20)
    rows = reopened.fetch(0, 100)
    assert [(r.device, r.seq) for r in rows] == [("a", 3), ("b", 3), ("a", 4), ("b", 4),
                                                 ("a", 5), ("b", 5)]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert reopened.depth() == 6


def test_seq_continues_across_restarts_even_when_everything_was_acknowledged(tmp_path):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 20)
    ids = fill(outbox, "a", 7)
    outbox.ack(ids)
    outbox.close()
    reopened = SqliteOutbox(path, 1 << 20)
    assert reopened.depth() == 0
    assert reopened.next_seq("a") == 8 and reopened.next_seq("new") == 1


def test_committed_rows_survive_sigkill_without_close(tmp_path):
    path = tmp_path / "b.sqlite3"
    script = textwrap.dedent(f"""
        import os, signal
        from edge_agent.buffer import SqliteOutbox
        outbox = SqliteOutbox({str(path)!r}, 1 << 20)
        for batch in range(20):
            for _ in range(10):
                outbox.append("a", outbox.next_seq("a"), "t", b"payload")
            outbox.flush()
        outbox.append("a", outbox.next_seq("a"), "t", b"never flushed")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    reopened = SqliteOutbox(path, 1 << 20)
    assert [row.seq for row in reopened.fetch(0, 1000)] == list(range(1, 201))
    assert reopened.next_seq("a") == 201  # the unflushed seq was never promised to anyone


def test_max_bytes_drops_oldest_counts_them_and_logs_once_per_episode(tmp_path):
    log = LogSink()
    outbox = SqliteOutbox(tmp_path / "b.sqlite3", 64 * 1024, log=log)
    for _ in range(100):
        fill(outbox, "a", 10, size=200)
    assert outbox.size_bytes() <= 64 * 1024
    remaining = outbox.fetch(0, 10_000)
    assert remaining[-1].seq == 1000  # the newest are kept
    assert outbox.dropped == 1000 - len(remaining) == remaining[0].seq - 1
    assert len(log.events("buffer_full_dropping_oldest")) == 1

    outbox.ack([row.id for row in remaining])  # the broker is back: the episode ends
    outbox.flush()  # acknowledged rows leave the file in the next flush's transaction
    assert log.events("buffer_drops_ended") == [{"dropped": outbox.dropped, "size_bytes": 0}]
    fill(outbox, "a", 400, size=200)  # a second episode is logged again
    assert len(log.events("buffer_full_dropping_oldest")) == 2


def test_memory_outbox_drops_oldest_with_the_same_accounting():
    log = LogSink()
    outbox = MemoryOutbox(64 * 1024, log=log)
    fill(outbox, "a", 1000, size=200)
    remaining = outbox.fetch(0, 10_000)
    assert outbox.dropped == remaining[0].seq - 1 > 0
    assert len(log.events("buffer_full_dropping_oldest")) == 1


def test_a_path_that_cannot_be_created_degrades_to_memory_at_start(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log = LogSink()
    outbox = SqliteOutbox(blocker / "b.sqlite3", 1 << 20, log=log)
    assert outbox.degraded and "buffering in memory" in outbox.degraded
    fill(outbox, "a", 3)
    assert [row.seq for row in outbox.fetch(0, 10)] == [1, 2, 3]
    assert log.events("buffer_degraded")[0]["during"] == "open"


def test_a_corrupt_file_is_moved_aside_and_a_fresh_buffer_starts(tmp_path):
    path = tmp_path / "b.sqlite3"
    path.write_bytes(b"this is not an sqlite database" * 100)
    log = LogSink()
    outbox = SqliteOutbox(path, 1 << 20, log=log)
    assert outbox.degraded is None
    fill(outbox, "a", 2)
    assert outbox.depth() == 2
    assert list(tmp_path.glob("b.sqlite3.corrupt-*"))
    assert log.events("buffer_corrupt_moved_aside")


def test_a_full_disk_degrades_to_memory_without_losing_or_reordering_anything(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse to grow files past 256 KiB (EFBIG), which
    SQLite sees exactly as a full disk; the outbox must carry on in memory."""
    path = tmp_path / "b.sqlite3"
    script = textwrap.dedent(f"""
        import json, resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        from edge_agent.buffer import SqliteOutbox
        outbox = SqliteOutbox({str(path)!r}, 64 << 20)
        ids = []
        for batch in range(200):
            for _ in range(5):
                ids.append(outbox.append("a", outbox.next_seq("a"), "t", b"x" * 1000))
            outbox.flush()
        half = [row.id for row in outbox.fetch(0, 100)]
        outbox.ack(half)
        rows = outbox.fetch(0, 10_000)
        outbox.close()
        print(json.dumps({{"degraded": outbox.degraded, "seqs": [r.seq for r in rows],
                          "depth": outbox.depth()}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["degraded"] and "buffering in memory" in report["degraded"]
    assert report["seqs"] == list(range(101, 1001))
    assert report["depth"] == 900


def test_open_outbox_without_path_is_in_memory_and_with_path_is_sqlite(tmp_path):
    from edge_agent.config import BufferConfig

    assert isinstance(open_outbox(BufferConfig(), None), MemoryOutbox)
    durable = open_outbox(BufferConfig(path=tmp_path / "b.sqlite3"), None)
    assert isinstance(durable, SqliteOutbox) and durable.degraded is None
    assert Path(tmp_path / "b.sqlite3").exists()


def test_a_backlog_is_stored_compressed_and_replayed_byte_for_byte(tmp_path):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 30)
    readings = [{"metric": f"r{i:02d}", "value": i * 0.1, "unit": "Cel", "ts": 1795693500761,
                 "quality": "good"} for i in range(50)]
    payloads = [json.dumps({"seq": n, "readings": readings}).encode() for n in range(1000)]
    for n, payload in enumerate(payloads):
        outbox.append("d", n + 1, "edge/n/d/telemetry", payload)
        if n % 10 == 9:
            outbox.flush()
    assert [row.payload for row in outbox.fetch(0, 5000)] == payloads
    raw_bytes = sum(len(p) for p in payloads)
    assert outbox.size_bytes() < raw_bytes / 3  # the backlog past the live window is zipped
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        zipped = db.execute("SELECT count(*) FROM messages WHERE zipped = 1").fetchone()[0]
    assert zipped >= 1000 - 300  # only the first rows (no backlog yet) are stored as they are
    outbox.close()
    again = SqliteOutbox(path, 1 << 30)  # and after a restart
    assert [row.payload for row in again.fetch(0, 5000)] == payloads
    again.close()

