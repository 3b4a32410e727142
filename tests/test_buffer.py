"""The SQLite outbox on a real file: durability, order, seq, limits, and a disk that fails."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edge_agent.buffer import SqliteOutbox
from edge_agent.outbox import MemoryOutbox, open_outbox
from tests.delivery_support import flip_every_copy


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
        degraded, depth = outbox.degraded, outbox.depth()
        outbox.close()  # a last try to get back to disk: compressed, the 900 rows fit
        on_disk = [r.seq for r in SqliteOutbox({str(path)!r}, 64 << 20).fetch(0, 10_000)]
        print(json.dumps({{"degraded": degraded, "seqs": [r.seq for r in rows],
                          "depth": depth, "on_disk": on_disk}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["degraded"] and "buffering in memory" in report["degraded"]
    assert report["seqs"] == list(range(101, 1001))
    assert report["depth"] == 900
    assert report["on_disk"] == list(range(101, 1001))


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



# -- faults: every row checked on the way out -------------------------------------------------
def _stored(path: Path, row_id: int) -> tuple[bytes, int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT payload, zipped FROM messages WHERE id = ?", (row_id,)).fetchone()


def _backlog(path: Path, devices: tuple[str, ...] = ("a", "b"), count: int = 400,
             log: Any = None) -> SqliteOutbox:
    """A closed buffer with `count` messages per device: the first rows plain, the rest
    (a backlog) compressed."""
    outbox = SqliteOutbox(path, 1 << 30, log=log)
    for _ in range(count // 10):
        for device in devices:
            fill(outbox, device, 10)
    outbox.close()
    return outbox


def _seqs_by_device(rows: list[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for row in rows:
        out.setdefault(row.device, []).append(row.seq)
    return out


def test_a_damaged_row_of_each_storage_form_is_quarantined_and_the_rest_go_on(tmp_path):
    path = tmp_path / "b.sqlite3"
    _backlog(path)
    plain_id, zipped_id = 5, 700
    plain, plain_zipped = _stored(path, plain_id)
    zipped, zipped_flag = _stored(path, zipped_id)
    assert (plain_zipped, zipped_flag) == (0, 1)
    flip_every_copy(path, plain, offset=20)  # bit rot inside JSON: still parses, wrong values
    flip_every_copy(path, zipped, offset=len(zipped) // 2)  # zlib stream damaged

    log = LogSink()
    outbox = SqliteOutbox(path, 1 << 30, log=log)
    rows = []
    while batch := outbox.fetch(rows[-1].id if rows else 0, 64):  # never raises
        rows.extend(batch)
        outbox.ack([row.id for row in batch])
    outbox.flush()
    ids = {row.id for row in rows}
    assert plain_id not in ids and zipped_id not in ids
    assert len(rows) == 800 - 2 and outbox.quarantined == 2
    assert all(json.loads(row.payload)["seq"] == row.seq for row in rows)  # nothing garbled
    quarantined = log.events("buffer_rows_quarantined")
    assert [r["device"] for e in quarantined for r in e["ranges"]] == ["a", "b"]
    assert {r["reason"] for e in quarantined for r in e["ranges"]} == {"checksum mismatch"}
    outbox.close()
    with sqlite3.connect(path) as db:  # set aside for inspection, out of the message table
        assert db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 2
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_header_flips_lose_only_the_damaged_rows_never_the_backlog(tmp_path):
    """A BLOB read back as non-UTF-8 TEXT (one flipped bit in a record header) used to fail
    the whole backlog read; the bytes are intact, so the row is simply delivered. A seq
    turned into text or a device name into a blob cannot be trusted: that row alone goes."""
    path = tmp_path / "b.sqlite3"
    _backlog(path, devices=("a", "b", "c"), count=100)
    from tests.delivery_support import flip_blob_to_text

    assert _stored(path, 290)[1] == 1  # compressed: as TEXT, not valid UTF-8
    flip_blob_to_text(path, 4)  # one bit in the file: the payload's BLOB type becomes TEXT
    flip_blob_to_text(path, 290)
    with sqlite3.connect(path) as db:  # more type damage, made through SQLite
        db.execute("UPDATE messages SET payload = CAST(x'ff' || payload AS TEXT) WHERE id = 3")
        db.execute("UPDATE messages SET seq = 'x' || seq WHERE id = 10")
        db.execute("UPDATE messages SET device = CAST(device AS BLOB) || x'ff' WHERE id = 20")
    log = LogSink()
    outbox = SqliteOutbox(path, 1 << 30, log=log)
    rows = outbox.fetch(0, 1000)
    assert {row.id for row in rows} == set(range(1, 301)) - {3, 10, 20}
    assert outbox.quarantined == 3 and outbox.depth() == 297
    assert json.loads(next(r for r in rows if r.id == 4).payload)["seq"] == 4
    with sqlite3.connect(path) as db:  # the flip was real: SQLite itself now says TEXT
        assert db.execute("SELECT typeof(payload) FROM messages WHERE id IN (4, 290)"
                          ).fetchall() == [("text",), ("text",)]
        with pytest.raises(sqlite3.OperationalError, match="UTF-8"):  # what used to happen
            db.execute("SELECT payload FROM messages WHERE id = 290").fetchall()


def test_a_buffer_without_checksums_migrates_without_losing_a_row(tmp_path):
    path = tmp_path / "b.sqlite3"
    with sqlite3.connect(path) as db:  # the 0.2 schema: zipped but no crc
        db.executescript("""
            CREATE TABLE messages (id INTEGER PRIMARY KEY, device TEXT NOT NULL,
                seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
                zipped INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE seqs (device TEXT PRIMARY KEY, seq INTEGER NOT NULL);""")
        import zlib
        db.executemany("INSERT INTO messages VALUES (?, 'a', ?, 't', ?, ?)",
                       [(n, n, zlib.compress(b"%d" % n) if n % 2 else b"%d" % n, n % 2)
                        for n in range(1, 51)])
        db.execute("INSERT INTO seqs VALUES ('a', 50)")
    outbox = SqliteOutbox(path, 1 << 30)
    assert [row.payload for row in outbox.fetch(0, 100)] == [b"%d" % n for n in range(1, 51)]
    assert outbox.next_seq("a") == 51
    fill(outbox, "a", 1)  # new rows get a checksum
    outbox.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM messages WHERE crc IS NOT NULL").fetchone() == (1,)


# -- faults: seq never reused --------------------------------------------------------------------
def test_seq_is_never_reused_after_the_buffer_is_lost_between_runs(tmp_path):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 20)
    fill(outbox, "a", 1500)  # crosses a reservation block
    outbox.close()
    for name in ("b.sqlite3", "b.sqlite3-wal", "b.sqlite3-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    log = LogSink()
    again = SqliteOutbox(path, 1 << 20, log=log)
    seq = again.next_seq("a")
    assert seq > 1500  # a subscriber saw 1..1500: never again
    jump = log.events("seq_resumed_after_reservation")[0]
    assert jump["device"] == "a" and jump["gap_at_most"] >= seq - 1501
    assert again.stats()["seq_skipped"] == jump["gap_at_most"]


def test_a_corrupt_buffer_moved_aside_keeps_seq_going(tmp_path):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 20)
    fill(outbox, "a", 30)
    outbox.close()
    path.write_bytes(b"garbage" * 1000)
    again = SqliteOutbox(path, 1 << 20)
    assert again.next_seq("a") > 30 and list(tmp_path.glob("b.sqlite3.corrupt-*"))


def test_a_clean_restart_continues_seq_without_a_gap(tmp_path):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 20)
    fill(outbox, "a", 1234)
    outbox.close()
    log = LogSink()
    assert SqliteOutbox(path, 1 << 20, log=log).next_seq("a") == 1235
    assert not log.events("seq_resumed_after_reservation")


def test_a_broken_seq_state_file_is_reported_and_the_buffer_seq_used(tmp_path):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 20)
    fill(outbox, "a", 12)
    outbox.close()
    state = tmp_path / "b.sqlite3.seq.json"
    state.write_bytes(state.read_bytes().replace(b"[", b"[9", 1))  # a digit flipped in
    log = LogSink()
    again = SqliteOutbox(path, 1 << 20, log=log)
    assert again.next_seq("a") == 13
    broken = log.events("state_file_corrupt")
    assert broken and broken[0]["error"] == "checksum mismatch" and broken[0]["moved_to"]


# -- faults: the file deleted or replaced while running -----------------------------------------
def _recovered(outbox: SqliteOutbox) -> bool:
    outbox.flush()  # where the outbox acts on what its watch thread saw
    return outbox.recoveries > 0


def test_a_buffer_deleted_while_running_is_rebuilt_with_everything_it_held(tmp_path):
    from tests.helpers import wait_until

    path = tmp_path / "b.sqlite3"
    log = LogSink()
    outbox = SqliteOutbox(path, 1 << 30, log=log)
    fill(outbox, "a", 300)
    outbox.ack([row.id for row in outbox.fetch(0, 50)])  # 50 acknowledged, not yet deleted
    for name in ("b.sqlite3", "b.sqlite3-wal", "b.sqlite3-shm"):
        (tmp_path / name).unlink()
    wait_until(lambda: _recovered(outbox), timeout=5, what="the loss to be noticed")
    assert log.events("buffer_file_lost")[0]["problem"] == "the buffer file disappeared"
    fill(outbox, "a", 5)
    assert [row.seq for row in outbox.fetch(0, 1000)] == list(range(51, 306))
    outbox.close()
    reopened = SqliteOutbox(path, 1 << 30)  # the new file holds them
    assert [row.seq for row in reopened.fetch(0, 1000)] == list(range(51, 306))
    assert reopened.next_seq("a") == 306


def test_a_buffer_replaced_while_running_is_moved_aside_and_nothing_is_lost(tmp_path):
    from tests.helpers import wait_until

    path = tmp_path / "b.sqlite3"
    log = LogSink()
    outbox = SqliteOutbox(path, 1 << 30, log=log)
    fill(outbox, "a", 20)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE unrelated (x)")
    os.replace(other, path)
    wait_until(lambda: _recovered(outbox), timeout=5, what="the replacement to be noticed")
    assert [row.seq for row in outbox.fetch(0, 100)] == list(range(1, 21))
    recovered = log.events("buffer_recovered")[0]
    assert recovered["kept"] == 20 and "replaced" in recovered["moved_to"]
    with sqlite3.connect(recovered["moved_to"]) as db:  # the stranger is kept for people
        assert db.execute("SELECT count(*) FROM unrelated").fetchone() == (0,)
    outbox.close()


# -- the in-memory store: real memory, same accounting ------------------------------------------
def test_memory_outbox_behaves_like_a_plain_ordered_dict_under_random_use():
    import random

    rng = random.Random(7)
    outbox = MemoryOutbox(200_000)
    model: dict[int, tuple[str, int, bytes]] = {}
    for step in range(20_000):
        action = rng.random()
        if action < 0.6:
            device = rng.choice("abc")
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            seq = outbox.next_seq(device)
            row_id = outbox.append(device, seq, f"t/{device}", payload)
            model[row_id] = (device, seq, payload)
            size = sum(len(p) + 3 + 40 for _, _, p in model.values())
            while size > 200_000 and len(model) > 1:  # what drop-oldest must have done
                oldest = min(model)
                size -= len(model.pop(oldest)[2]) + 43
        elif model:
            some = rng.sample(sorted(model), min(len(model), rng.randrange(1, 20)))
            outbox.ack(some)
            for row_id in some:
                model.pop(row_id)
        if step % 500 == 0:
            rows = outbox.fetch(0, 1_000_000)
            assert [(r.id, r.device, r.seq, r.payload) for r in rows] == [
                (i, *model[i]) for i in sorted(model)]
            after = sorted(model)[len(model) // 2] if model else 0
            assert [r.id for r in outbox.fetch(after, 7)] == [i for i in sorted(model)
                                                              if i > after][:7]
    assert outbox.depth() == len(model)
    assert outbox.size_bytes() == sum(len(p) + 3 + 40 for _, _, p in model.values())


def test_the_memory_buffer_holds_to_max_bytes_in_resident_memory(tmp_path):
    """Fills a 32 MiB in-memory buffer with ~200-byte orjson payloads (what the runtime
    makes) and measures the process's RSS, not a counter."""
    script = textwrap.dedent("""
        import json, resource, orjson
        from edge_agent.outbox import MemoryOutbox

        def rss():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))

        max_bytes = 32 << 20
        outbox = MemoryOutbox(max_bytes)
        before = rss()
        for n in range(400_000):  # ~3x the limit: the oldest are dropped on the way
            payload = orjson.dumps({"node": "n", "device": "d%d" % (n % 10), "seq": n,
                                    "readings": [{"metric": "temperature", "value": n * 0.1,
                                                  "unit": "Cel", "ts": 1795693500761,
                                                  "quality": "good"}] * 2})
            outbox.append("d%d" % (n % 10), n, "edge/node/d%d/telemetry" % (n % 10), payload)
        print(json.dumps({"grew": rss() - before, "counted": outbox.size_bytes(),
                          "depth": outbox.depth(), "dropped": outbox.dropped,
                          "payload": len(payload)}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print("memory buffer:", report)
    assert 150 <= report["payload"] <= 300 and report["dropped"] > 0
    assert report["counted"] <= 32 << 20
    assert report["grew"] <= 1.15 * (32 << 20)  # was ~21x before the compact store


# -- the WAL: bounded, and checkpoint failures seen ----------------------------------------------
def test_the_wal_is_cut_back_after_checkpoints(tmp_path):
    from edge_agent.store.sqlitefile import WAL_SIZE_LIMIT
    from tests.helpers import wait_until

    path = tmp_path / "b.sqlite3"
    # the SQLite path itself: it looks into the file (the journal's: test_journal.py)
    outbox = SqliteOutbox(path, 1 << 30, journal=False)
    wal = tmp_path / "b.sqlite3-wal"
    for _ in range(30):  # ~15 MB through the WAL (past its limit), acknowledged as it goes
        ids = fill(outbox, "a", 50, size=10_000)
        outbox.ack(ids)

    def cut_back() -> bool:
        fill(outbox, "a", 1)  # the next write after a complete checkpoint restarts the WAL
        return wal.stat().st_size <= WAL_SIZE_LIMIT
    wait_until(cut_back, timeout=10, interval=0.2, what="the WAL to be truncated")
    assert outbox.stats()["wal_bytes"] <= WAL_SIZE_LIMIT
    assert outbox._checkpointer is not None and outbox._checkpointer.checkpoints >= 1
    outbox.close()


def test_a_write_of_the_buffer_thread_during_a_commit_never_sends_the_buffer_to_memory(
        tmp_path, monkeypatch):
    """The buffer thread writes to the file too (its WAL restart). A commit that read before
    it took the write lock found that write in between and failed at once (`database is
    locked`, no busy wait), and the buffer went to memory: the commit takes the lock first."""
    import edge_agent.buffer as buffer_module

    path = tmp_path / "b.sqlite3"
    # the SQLite path itself: it looks into the file (the journal's: test_journal.py)
    outbox = SqliteOutbox(path, 1 << 30, journal=False)
    ids = fill(outbox, "a", 3)
    outbox.ack(ids)  # the next commit starts by reading their sizes
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    refused: list[str] = []
    real_delete_rows = buffer_module.delete_rows

    def thread_writes_meanwhile(db, acked):
        try:
            other.execute("INSERT OR REPLACE INTO meta VALUES ('wal_restarted', 'x')")
        except sqlite3.OperationalError as exc:
            refused.append(str(exc))  # it waits for the commit instead (busy handler)
        return real_delete_rows(db, acked)
    monkeypatch.setattr(buffer_module, "delete_rows", thread_writes_meanwhile)
    fill(outbox, "a", 1)
    assert outbox.degraded is None
    assert refused and "locked" in refused[0]
    assert [row.seq for row in outbox.fetch(0, 10)] == [4]
    other.close()
    outbox.close()


def test_checkpoint_failures_are_counted_and_logged_once_per_episode(tmp_path):
    """Another connection holding the file locked (here: our writer in exclusive locking
    mode) makes every checkpoint fail with `database is locked`."""
    from tests.helpers import wait_until

    log = LogSink()
    # the SQLite path itself: it looks into the file (the journal's: test_journal.py)
    outbox = SqliteOutbox(tmp_path / "b.sqlite3", 1 << 30, log=log, journal=False)
    outbox._db.execute("PRAGMA locking_mode=EXCLUSIVE")  # type: ignore[union-attr]
    fill(outbox, "a", 10)
    wait_until(lambda: outbox.stats()["checkpoint_failures"] >= 2, timeout=10,
               what="failing checkpoints")
    failed = log.events("buffer_checkpoint_failed")
    assert len(failed) == 1 and "locked" in failed[0]["error"]
    outbox._db.execute("PRAGMA locking_mode=NORMAL")  # type: ignore[union-attr]
    fill(outbox, "a", 1)  # the lock is given up at the end of the next transaction
    wait_until(lambda: log.events("buffer_checkpoint_recovered"), timeout=10, what="recovery")
    assert [row.seq for row in outbox.fetch(0, 100)] == list(range(1, 12))
    outbox.close()


def test_a_file_with_damaged_pages_is_salvaged_row_by_row_not_dropped_whole(tmp_path):
    """A b-tree page overwritten (SQLite: `database disk image is malformed`): the file is
    moved aside and every row on the pages still readable goes to the new file."""
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 30)
    for _ in range(12):
        fill(outbox, "a", 10, size=1000)  # ~3 rows per 4 KiB page, the first 256 plain
    outbox.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    leaves = [n for n in range(1, len(data) // page_size)
              if data[n * page_size] == 0x0D]  # table b-tree leaf pages (page 1 is schema)
    victim = leaves[len(leaves) // 2]
    data[victim * page_size:victim * page_size + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))

    log = LogSink()
    again = SqliteOutbox(path, 1 << 30, log=log)
    rows = again.fetch(0, 1000)
    assert log.events("buffer_corrupt_moved_aside") and log.events("buffer_salvaged")
    assert 1 <= again.lost <= 4 and again.quarantined == 0
    assert len(rows) == 120 - again.lost
    assert [row.seq for row in rows] == sorted(row.seq for row in rows)
    assert all(json.loads(row.payload)["seq"] == row.seq for row in rows)
    assert again.next_seq("a") > 120  # the damaged file's seqs are never handed out again


# -- state files: degrade like the buffer ---------------------------------------------------------
def test_the_bdseq_state_is_kept_in_memory_when_its_file_cannot_be_written(tmp_path):
    from edge_agent.outputs.sparkplug.session import BdSeqStore

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log = LogSink()
    store = BdSeqStore(blocker / "buffer.sqlite3.sparkplug.json", log)
    store.advance(0)  # used to raise OSError on every connect
    store.advance(1)
    assert store.next == 2 and store.degraded and "kept in memory" in store.degraded
    assert len(log.events("state_file_degraded")) == 1  # once, not per connect


def test_a_broken_bdseq_file_is_reported_and_moved_aside_not_silently_reset(tmp_path):
    from edge_agent.outputs.sparkplug.session import BdSeqStore

    path = tmp_path / "buffer.sqlite3.sparkplug.json"
    BdSeqStore(path).advance(41)
    assert BdSeqStore(path).next == 42
    path.write_bytes(path.read_bytes().replace(b"42", b"43"))  # bit rot: checksum fails
    log = LogSink()
    assert BdSeqStore(path, log).next == 0
    broken = log.events("state_file_corrupt")
    assert broken[0]["what"] == "sparkplug bdSeq" and broken[0]["moved_to"]
    assert list(tmp_path.glob("buffer.sqlite3.sparkplug.json.corrupt-*"))


def test_a_disk_that_takes_writes_again_gets_the_buffer_back_from_memory(tmp_path):
    """Full (a real tmpfs filled up): memory; space freed: a new durable file with every row
    still owed, in order, and the seqs, without a restart."""
    from tests.delivery_support import SmallFilesystem
    from tests.helpers import wait_until

    fs = SmallFilesystem(tmp_path / "fs", size="1m")
    try:
        path = fs.path / "b.sqlite3"
        log = LogSink()
        outbox = SqliteOutbox(path, 64 << 20, log=log, retry_every=0.2)
        fill(outbox, "a", 10)
        fs.fill()
        while not outbox.degraded:  # the WAL grows until the disk says no
            fill(outbox, "a", 20, size=2000)
        outbox.ack([row.id for row in outbox.fetch(0, 5)])  # acknowledged while in memory
        (fs.path / "filler").unlink()
        wait_until(lambda: (fill(outbox, "a", 1), outbox.degraded is None)[1], timeout=10,
                   interval=0.1, what="back on disk")
        assert log.events("buffer_durable_again")
        seqs = [row.seq for row in outbox.fetch(0, 10_000)]
        last = outbox.seqs.current["a"]
        assert seqs == list(range(6, last + 1)) and outbox.dropped == 0
        outbox.close()
        reopened = SqliteOutbox(path, 64 << 20)
        assert [row.seq for row in reopened.fetch(0, 10_000)] == seqs
        assert reopened.next_seq("a") == last + 1
        reopened.close()
    finally:
        fs.close()


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_bytes_waiting_return_to_zero_when_everything_is_acknowledged(tmp_path, store):
    """An alert on `edge_agent_buffer_bytes > 0` must clear once the buffer has drained."""
    outbox = (SqliteOutbox(tmp_path / "b.sqlite3", 1 << 20) if store == "sqlite"
              else MemoryOutbox(1 << 20))
    for round_ in range(3):
        fill(outbox, "a", 50 + round_)
        fill(outbox, "b", 7)
        assert outbox.size_bytes() > 0 and outbox.stats()["bytes"] > 0
        outbox.ack([row.id for row in outbox.fetch(0, 1000)])
        outbox.flush()
        assert outbox.depth() == 0
        assert outbox.size_bytes() == 0 and outbox.stats()["bytes"] == 0


# -- the live window: rows this process committed are handed out from memory --------------------
class Queries:
    """Counts the statements the outbox's own connection runs that read messages back."""

    def __init__(self, outbox: SqliteOutbox) -> None:
        self.outbox = outbox
        self.statements: list[str] = []
        outbox._db.set_trace_callback(self.statements.append)  # type: ignore[union-attr]

    def selects(self) -> int:
        """Statements that read stored rows (not the sizes summed by a delete)."""
        from edge_agent.store.sqlitefile import COLUMNS

        return sum(1 for s in self.statements if s.lstrip().startswith(f"SELECT {COLUMNS}"))


def _as_stored(path: Path) -> list[Any]:
    """Every row of the file, read and checked the way a backlog is (rows.decode)."""
    from edge_agent.store.rows import decode
    from edge_agent.store.sqlitefile import COLUMNS

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        db.text_factory = bytes
        return [decode(*raw) for raw in
                db.execute(f"SELECT {COLUMNS} FROM messages ORDER BY id")]


def _walk(outbox: Any, cursor: int, window: int = 7) -> tuple[list[Any], int]:
    """What a publisher takes from `cursor` on: fetch a window, move the cursor, repeat."""
    taken = []
    while rows := outbox.fetch(cursor, window):
        taken.extend(rows)
        cursor = rows[-1].id
    return taken, cursor


def test_rows_just_committed_are_handed_out_from_memory_exactly_as_stored(tmp_path):
    path = tmp_path / "b.sqlite3"
    # the SQLite path itself: it looks into the file (the journal's: test_journal.py)
    outbox = SqliteOutbox(path, 1 << 30, journal=False)
    queries = Queries(outbox)
    cursor, taken = 0, []
    for round_ in range(30):
        fill(outbox, "a", 1 + round_ % 3)
        fill(outbox, "b", 2)
        rows, cursor = _walk(outbox, cursor, window=2)
        taken.extend(rows)
        outbox.ack([row.id for row in rows[:-1]])  # the last one is still in flight
    assert queries.selects() == 0  # neither the rows nor the empty fetches read the file
    stored = {row.id: row for row in _as_stored(path)}
    assert len([row for row in taken if row.id in stored]) >= 30
    assert all(stored[row.id] == row for row in taken if row.id in stored)
    assert [type(row).__name__ for row in taken] == ["Row"] * len(taken)
    assert _seqs_by_device(taken) == {"a": list(range(1, 61)), "b": list(range(1, 61))}
    outbox.close()
    again = SqliteOutbox(path, 1 << 30)  # what stayed unacknowledged is on disk, checked
    assert [row.id for row in again.fetch(0, 1000)] == [
        row.id for row in _as_stored(path)] and again.depth() == 30
    again.close()


def test_a_backlog_after_a_restart_is_read_from_the_file_and_checked(tmp_path):
    path = tmp_path / "b.sqlite3"
    _backlog(path, devices=("a",), count=100)
    plain, _ = _stored(path, 7)
    flip_every_copy(path, plain, offset=20)  # rotted while the agent was down
    outbox = SqliteOutbox(path, 1 << 30)
    queries = Queries(outbox)
    fill(outbox, "a", 5)  # live rows of the new process, after the backlog
    taken, cursor = _walk(outbox, 0)
    assert 7 not in {row.id for row in taken} and outbox.quarantined == 1
    assert [row.seq for row in taken] == [s for s in range(1, 106) if s != 7]
    assert queries.selects() >= 100 // 7  # the backlog came from the file, page by page
    before = queries.selects()
    fill(outbox, "a", 3)
    rows, _ = _walk(outbox, cursor)
    assert [row.seq for row in rows] == [106, 107, 108] and queries.selects() == before
    outbox.close()


def test_rows_dropped_for_max_bytes_are_never_handed_out_from_memory(tmp_path):
    path = tmp_path / "b.sqlite3"
    # the SQLite path itself: it looks into the file (the journal's: test_journal.py)
    outbox = SqliteOutbox(path, 8 * 1024, journal=False)
    taken: list[Any] = []
    cursor = 0
    for n in range(1, 41):  # the publisher lags: the oldest rows make room for new ones
        fill(outbox, "a", 1, size=400)
        if n in (10, 40):
            rows, cursor = _walk(outbox, cursor, window=3)
            stored = {row.id: row for row in _as_stored(path)}
            assert all(stored[row.id] == row for row in rows)  # none of them dropped
            taken.extend(rows)
            outbox.ack([row.id for row in rows])
    assert outbox.dropped > 0
    assert [row.seq for row in taken] == sorted({row.seq for row in taken})
    assert len(taken) + outbox.dropped == 40
    outbox.close()


def test_a_window_past_its_limit_is_read_back_from_the_file(tmp_path):
    from edge_agent.buffer import FRESH_ROWS

    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 30)
    queries = Queries(outbox)
    fill(outbox, "a", FRESH_ROWS + 10)  # the publisher fell behind: this is a backlog
    taken, _ = _walk(outbox, 0, window=64)
    assert queries.selects() > 0
    assert taken == _as_stored(path)
    outbox.close()


def test_after_a_rebuild_nothing_is_handed_out_stale_or_twice(tmp_path):
    from tests.helpers import wait_until

    path = tmp_path / "b.sqlite3"
    # the SQLite path itself: it looks into the file (the journal's: test_journal.py)
    outbox = SqliteOutbox(path, 1 << 30, journal=False)
    fill(outbox, "a", 20)
    first, cursor = _walk(outbox, 0)
    outbox.ack([row.id for row in first[:5]])  # acknowledged, not yet deleted
    fill(outbox, "a", 4)  # committed to the file about to go: in the live window
    path.unlink()
    wait_until(lambda: _recovered(outbox), timeout=5, what="the loss to be noticed")
    queries = Queries(outbox)
    rest, cursor = _walk(outbox, cursor)
    assert [row.seq for row in first + rest] == list(range(1, 25))
    assert queries.selects() > 0  # read from the rebuilt file, checked
    fill(outbox, "a", 2)
    more, _ = _walk(outbox, cursor)
    assert [row.seq for row in more] == [25, 26]
    replay, _ = _walk(outbox, 0)  # a new session starts over: every row still owed, once
    assert [row.seq for row in replay] == list(range(6, 27))
    assert replay == [row for row in _as_stored(path) if row.id > first[4].id]
    outbox.close()


def test_through_memory_and_back_to_disk_each_row_is_handed_out_once(tmp_path):
    from tests.delivery_support import SmallFilesystem
    from tests.helpers import wait_until

    fs = SmallFilesystem(tmp_path / "fs", size="1m")
    try:
        path = fs.path / "b.sqlite3"
        outbox = SqliteOutbox(path, 64 << 20, retry_every=0.2)
        fill(outbox, "a", 10)
        taken, cursor = _walk(outbox, 0, window=3)
        fs.fill()
        while not outbox.degraded:  # the WAL grows until the disk says no
            fill(outbox, "a", 5, size=2000)
            rows, cursor = _walk(outbox, cursor, window=3)
            taken.extend(rows)
        rows, cursor = _walk(outbox, cursor, window=3)
        taken.extend(rows)
        (fs.path / "filler").unlink()

        def back() -> bool:
            fill(outbox, "a", 1)
            return outbox.degraded is None

        wait_until(back, timeout=10, interval=0.1, what="back on disk")
        rows, cursor = _walk(outbox, cursor, window=3)
        taken.extend(rows)
        fill(outbox, "a", 3)
        rows, cursor = _walk(outbox, cursor, window=3)
        taken.extend(rows)
        last = outbox.seqs.current["a"]
        assert [row.seq for row in taken] == list(range(1, last + 1))
        replay, _ = _walk(outbox, 0)
        assert [row.seq for row in replay] == list(range(1, last + 1))
        outbox.close()
    finally:
        fs.close()


def test_a_new_session_from_the_start_skips_rows_acknowledged_or_set_aside_meanwhile(tmp_path):
    """The window still holds rows handed out when the publisher starts over (a reconnect
    replays from id 0): those acknowledged or quarantined since are never handed out again."""
    outbox = SqliteOutbox(tmp_path / "b.sqlite3", 1 << 30)
    fill(outbox, "a", 10)
    first = outbox.fetch(0, 100)
    outbox.ack([row.id for row in first[:4]])
    outbox.quarantine(first[5], "does not encode")
    assert [row.seq for row in outbox.fetch(0, 100)] == [5, 7, 8, 9, 10]
    assert [row.seq for row in outbox.fetch(0, 2)] == [5, 7]
    outbox.flush()  # the acknowledged and set-aside rows leave the file
    assert [row.seq for row in outbox.fetch(0, 100)] == [5, 7, 8, 9, 10]
    assert outbox.depth() == 5 and outbox.quarantined == 1
    outbox.close()
