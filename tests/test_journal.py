"""The outbox's journal (edge_agent.store.journal) under faults: killed processes, torn and
damaged records, a crash between a commit and the cut, a full disk, the file deleted or
replaced, and random use against a model. Real files, real SIGKILLs, a real full tmpfs."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.buffer import COMPRESS_BACKLOG, FRESH_ROWS, SqliteOutbox
from edge_agent.store import journal
from edge_agent.store.journal import journal_path
from edge_agent.store.rows import row_size
from tests.test_buffer import LogSink, fill


def _killed(path: Path, body: str, journal_on: bool = True) -> str:
    """Runs `body` against an outbox at `path` in a child process that then SIGKILLs
    itself (no close, no cut); returns what the child printed."""
    script = textwrap.dedent("""
        import json, os, signal, sqlite3, sys
        import edge_agent.buffer
        from edge_agent.buffer import SqliteOutbox
        edge_agent.buffer.SYNC_EVERY = 60.0  # however slow the machine: the journal only
        from tests.test_buffer import fill
        outbox = SqliteOutbox(sys.argv[1], 1 << 30, journal=sys.argv[2] == "1")
        def in_sqlite():
            with sqlite3.connect(sys.argv[1]) as db:
                return db.execute("SELECT count(*) FROM messages").fetchone()[0]
    """) + textwrap.dedent(body) + "\nsys.stdout.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n"
    result = subprocess.run([sys.executable, "-c", script, str(path), "1" if journal_on else "0"],
                            capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert result.returncode == -9, result.stderr
    return result.stdout


@pytest.fixture
def slow_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """However slow the machine, the journal takes every flush it may (no SYNC_EVERY cut)."""
    import edge_agent.buffer as buffer_module

    monkeypatch.setattr(buffer_module, "SYNC_EVERY", 60.0)


def _seqs(outbox: SqliteOutbox) -> list[int]:
    return [row.seq for row in outbox.fetch(0, 100_000)]


def _in_sqlite(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM messages").fetchone()[0]


def test_rows_only_in_the_journal_survive_sigkill_and_acknowledged_ones_stay_gone(tmp_path):
    path = tmp_path / "b.sqlite3"
    out = _killed(path, """
        for _ in range(20):
            fill(outbox, "a", 10)
        outbox.ack([row.id for row in outbox.fetch(0, 150)])
        outbox.flush()  # the acknowledgements are journaled too
        outbox.append("a", outbox.next_seq("a"), "t", b"never flushed")
        size = os.path.getsize(sys.argv[1] + ".journal")
        print(json.dumps({"in_sqlite": in_sqlite(), "journal": size}))
    """)
    state = json.loads(out)
    assert state["in_sqlite"] == 0 and state["journal"] > 0  # only the journal held them
    log = LogSink()
    reopened = SqliteOutbox(path, 1 << 30, log=log)
    assert _seqs(reopened) == list(range(151, 201))
    assert reopened.depth() == 50 and _in_sqlite(path) == 50
    assert reopened.next_seq("a") == 201  # the unflushed seq was never promised to anyone
    assert log.events("buffer_journal_replayed")[0]["rows"] == 50
    assert journal_path(path).stat().st_size == 0  # replayed, then started anew
    reopened.close()
    assert not journal_path(path).exists()  # a clean close leaves none behind


def test_a_crash_between_the_commit_and_the_cut_replays_nothing_twice(tmp_path, slow_clock):
    """The journal still holds records the file already accounts for (the process died
    after the transaction, before the cut): rows acknowledged since must not come back."""
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 30)
    ids = fill(outbox, "a", 5)
    outbox.ack(ids[:3])
    outbox.flush()
    stale = journal_path(path).read_bytes()
    assert journal.read(journal_path(path)).records == 2
    outbox.close()  # rows 4 and 5 go into SQLite; the journal is cut (here: removed)
    again = SqliteOutbox(path, 1 << 30)
    assert _seqs(again) == [4, 5]
    again.ack(ids[3:])
    again.close()
    journal_path(path).write_bytes(stale)  # as if the cut had never happened
    log = LogSink()
    third = SqliteOutbox(path, 1 << 30, log=log)
    assert _seqs(third) == [] and third.depth() == 0
    assert third.next_seq("a") == 6
    assert not log.events("buffer_journal_damaged")
    third.close()


def test_a_torn_tail_is_cut_and_every_whole_record_replayed(tmp_path):
    path = tmp_path / "b.sqlite3"
    _killed(path, """
        for _ in range(3):
            fill(outbox, "a", 10)
    """)
    whole = journal_path(path).stat().st_size
    os.truncate(journal_path(path), whole - 7)  # the last write never finished
    log = LogSink()
    reopened = SqliteOutbox(path, 1 << 30, log=log)
    assert _seqs(reopened) == list(range(1, 21))
    torn = log.events("buffer_journal_torn_tail")
    assert torn and torn[0]["records_read"] == 2 and torn[0]["bytes_cut"] > 0
    assert not log.events("buffer_journal_damaged")
    assert reopened.next_seq("a") == 21  # a write that never returned published nothing
    reopened.close()


def test_a_damaged_record_is_moved_aside_and_seqs_go_past_anything_it_held(tmp_path):
    path = tmp_path / "b.sqlite3"
    _killed(path, """
        for _ in range(3):
            fill(outbox, "a", 10)
    """)
    data = bytearray(journal_path(path).read_bytes())
    second = len(data) // 3 + 40  # inside the second of three equal records
    data[second] ^= 0x10
    journal_path(path).write_bytes(bytes(data))
    log = LogSink()
    reopened = SqliteOutbox(path, 1 << 30, log=log)
    assert _seqs(reopened) == list(range(1, 11))
    damaged = log.events("buffer_journal_damaged")
    assert damaged and damaged[0]["records_read"] == 1 and "CRC" in damaged[0]["problem"]
    assert Path(damaged[0]["moved_to"]).read_bytes() == bytes(data)  # kept for people
    assert reopened.next_seq("a") > 30  # the lost records may have published up to 30
    assert reopened.seqs.skipped > 0
    reopened.close()


def test_a_journal_left_behind_is_replayed_with_the_journal_turned_off(tmp_path):
    path = tmp_path / "b.sqlite3"
    _killed(path, """
        fill(outbox, "a", 10)
        fill(outbox, "b", 5)
    """)
    reopened = SqliteOutbox(path, 1 << 30, journal=False)
    assert [(r.device, r.seq) for r in reopened.fetch(0, 100)] == (
        [("a", s) for s in range(1, 11)] + [("b", s) for s in range(1, 6)])
    fill(reopened, "a", 1)
    assert _in_sqlite(path) == 16  # off: every flush commits
    reopened.close()


def test_a_new_session_from_the_start_gets_the_journal_rows_after_the_file_rows(
        tmp_path, slow_clock):
    """A publisher whose cursor is behind the live window reads the file; the rows only in
    the journal must follow, or that session would wait for them forever."""
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 30)
    backlog = fill(outbox, "a", FRESH_ROWS + 10)  # a backlog: committed to SQLite
    assert _in_sqlite(path) == FRESH_ROWS + 10
    outbox.ack(backlog[:-40])
    fill(outbox, "a", 0)  # a backlog drained: deleted at once
    assert _in_sqlite(path) == 40
    outbox.ack(backlog[-40:])
    fill(outbox, "a", 3)  # the live window again: the journal, with those 40 deletions
    assert _in_sqlite(path) == 40 and outbox.depth() == 3
    first = outbox.fetch(0, 2)  # a new session: behind the window, from the file
    rest = outbox.fetch(first[-1].id, 100)
    assert [row.seq for row in first + rest] == list(range(FRESH_ROWS + 11, FRESH_ROWS + 14))
    fill(outbox, "a", 2)
    assert [row.seq for row in outbox.fetch(rest[-1].id, 100)] == [FRESH_ROWS + 14,
                                                                   FRESH_ROWS + 15]
    outbox.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_journal_deleted_or_replaced_while_running_loses_nothing(tmp_path, monkeypatch, how):
    """Found at the next cut (each SYNC_EVERY, here at once): a replacement is moved aside,
    a new journal opened, and what a later kill leaves is all replayed."""
    path = tmp_path / "b.sqlite3"
    out = _killed(path, f"""
        import edge_agent.buffer
        edge_agent.buffer.SYNC_EVERY = 0.0  # every second flush goes into SQLite
        from edge_agent.store.journal import journal_path
        from pathlib import Path
        j = journal_path(Path(sys.argv[1]))
        fill(outbox, "a", 5)
        j.unlink()
        if {how == "replaced"!r}:
            j.write_bytes(b"not a journal" * 10)
        fill(outbox, "a", 5)  # into SQLite with the five journaled ones; then the cut
        fill(outbox, "a", 5)  # into the new journal
        print(json.dumps({{"in_sqlite": in_sqlite(), "journal": j.stat().st_size}}))
    """)
    state = json.loads(out)
    assert state["in_sqlite"] == 10 and state["journal"] > 0
    reopened = SqliteOutbox(path, 1 << 30)
    assert _seqs(reopened) == list(range(1, 16))
    aside = list(tmp_path.glob("b.sqlite3.journal.replaced-*"))
    assert len(aside) == (1 if how == "replaced" else 0)
    reopened.close()


def test_a_full_disk_cuts_a_partial_record_back_and_loses_nothing(tmp_path):
    """A real tmpfs filled up: the journal's write fails (or is cut short), the record is
    cut back off, the flush goes to SQLite (and on to memory when that fails too); with
    space again the journal is used again, and a restart replays everything in order."""
    from tests.delivery_support import SmallFilesystem
    from tests.helpers import wait_until

    fs = SmallFilesystem(tmp_path / "fs", size="1m")
    try:
        path = fs.path / "b.sqlite3"
        log = LogSink()
        outbox = SqliteOutbox(path, 64 << 20, log=log, retry_every=0.2)
        fill(outbox, "a", 10)
        assert journal_path(path).stat().st_size > 0 and _in_sqlite(path) == 0
        fs.fill()
        while not log.events("buffer_journal_write_failed") and not log.events(
                "buffer_journal_unusable"):
            fill(outbox, "a", 20, size=2000)
        replay = journal.read(journal_path(path))
        assert replay.torn_bytes == 0 and replay.damage is None  # no partial record left
        (fs.path / "filler").unlink()
        wait_until(lambda: (fill(outbox, "a", 1), outbox.degraded is None)[1], timeout=10,
                   interval=0.1, what="back on disk")
        fill(outbox, "a", 1)
        wait_until(lambda: (fill(outbox, "a", 1), journal_path(path).stat().st_size > 0)[1],
                   timeout=10, interval=0.1, what="the journal in use again")
        last = outbox.seqs.current["a"]
        assert _seqs(outbox) == list(range(1, last + 1)) and outbox.dropped == 0
        outbox._stop_checkpointer()  # abandoned, as by a kill: no close, no cut
        reopened = SqliteOutbox(path, 64 << 20)
        assert _seqs(reopened) == list(range(1, last + 1))
        assert reopened.next_seq("a") == last + 1
        reopened.close()
    finally:
        fs.close()


def test_a_disk_that_will_not_open_the_file_reads_the_journal_into_memory(tmp_path):
    from tests.delivery_support import SmallFilesystem

    fs = SmallFilesystem(tmp_path / "fs", size="1m")
    try:
        path = fs.path / "b.sqlite3"
        _killed(path, """
            fill(outbox, "a", 10)
            outbox.ack([row.id for row in outbox.fetch(0, 4)])
            fill(outbox, "a", 3)
        """)
        fs.read_only()
        log = LogSink()
        outbox = SqliteOutbox(path, 64 << 20, log=log)
        assert outbox.degraded and "memory" in outbox.degraded
        assert _seqs(outbox) == list(range(5, 14))
        assert outbox.next_seq("a") == 14
        outbox.close()
    finally:
        fs.close()


def test_random_use_with_kills_never_loses_reorders_or_reuses(tmp_path, monkeypatch):
    """Against a model: appends, flushes, publisher sessions, acknowledgements, bursts past
    the live window, the SQLite commit forced at random, and the process 'killed' (the
    outbox abandoned unclosed) then reopened from disk. After each reopen the rows are
    exactly those still owed, give or take acknowledgements not yet flushed (at least
    once), in order; seqs never go back; depth and bytes match the model throughout."""
    import edge_agent.buffer as buffer_module

    rng = random.Random(11)
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 30)
    owed: dict[int, tuple[str, int, bytes]] = {}  # not acknowledged
    acked_unflushed: dict[int, tuple[str, int, bytes]] = {}
    unflushed: list[int] = []
    flushed_seq: dict[str, int] = {}  # the highest seq a flush made durable, per device
    cursor = 0
    zipped = False  # a backlog was stored compressed: bytes are the stored ones

    def flushed() -> None:
        for row_id in unflushed:
            device, seq, _ = owed.get(row_id) or acked_unflushed[row_id]
            flushed_seq[device] = max(seq, flushed_seq.get(device, 0))
        unflushed.clear()
        acked_unflushed.clear()
    for _ in range(2000):
        monkeypatch.setattr(buffer_module, "SYNC_EVERY", rng.choice([0.0, 60.0, 60.0]))
        action = rng.random()
        if action < 0.4:
            for _ in range(rng.choice([1, 1, 1, 3, 5, 40, FRESH_ROWS // 2])):
                device = rng.choice("ab")
                seq = outbox.next_seq(device)
                assert seq > flushed_seq.get(device, 0)  # never a seq already made durable
                payload = json.dumps({"seq": seq, "n": rng.random()}).encode()
                row_id = outbox.append(device, seq, f"t/{device}", payload)
                owed[row_id] = (device, seq, payload)
                unflushed.append(row_id)
        elif action < 0.65:
            outbox.flush()
            flushed()
        elif action < 0.95:
            if rng.random() < 0.2:
                cursor = 0  # a new session starts over
            limit = rng.randrange(1, 200)
            rows = outbox.fetch(cursor, limit)
            pending = set(unflushed)
            expect = [i for i in sorted(owed) if i > cursor and i not in pending]
            assert [r.id for r in rows] == expect[:limit]
            assert all(owed[r.id] == (r.device, r.seq, r.payload) for r in rows)
            if rows:
                cursor = rows[-1].id
                taken = [r.id for r in rows if rng.random() < 0.8]
                outbox.ack(taken)
                for row_id in taken:
                    acked_unflushed[row_id] = owed.pop(row_id)
        else:
            if rng.random() < 0.5:
                outbox._stop_checkpointer()  # the kill: nothing flushed, closed or cut
                if outbox._journal is not None:
                    outbox._journal.close()
                outbox._close_db()
                for row_id in unflushed:  # never made durable: gone, their seqs unused
                    owed.pop(row_id, None)
                unflushed.clear()
            else:
                outbox.close()
                flushed()
            outbox = SqliteOutbox(path, 1 << 30)
            cursor = 0
            rows = outbox.fetch(0, 1_000_000)
            ids = [r.id for r in rows]
            back = set(ids) - set(owed)  # acknowledged, the acknowledgement never flushed
            assert ids == sorted(ids) and set(owed) <= set(ids) and back <= set(acked_unflushed)
            for row_id in back:
                owed[row_id] = acked_unflushed[row_id]  # at least once: owed again
            acked_unflushed.clear()
            assert all(owed[r.id] == (r.device, r.seq, r.payload) for r in rows)
        zipped = (zipped or len(owed) > COMPRESS_BACKLOG // 2) and bool(owed)
        if not unflushed and not acked_unflushed:
            assert outbox.depth() == len(owed)
            if not zipped and not outbox._file_acks:  # (deleted, and counted, by a commit)
                assert outbox.size_bytes() == sum(
                    row_size(f"t/{d}", p) for d, _, p in owed.values())
    assert outbox.degraded is None and outbox.quarantined == 0 and outbox.dropped == 0
    outbox.close()


def test_a_record_reads_back_exactly_what_was_written():
    from edge_agent.store.rows import Row

    rows = [Row(7, "pump-ü", 3, "edge/n/pump-ü/telemetry", b"\x00\xff" * 300),
            Row(8, "b", 1, "t", b"")]
    record = journal.encode_record(rows, [5, 6], {"pump-ü": 3, "b": 1})
    replay = journal.Replay()
    journal._apply(record[8:], replay)
    assert list(replay.rows.values()) == rows and replay.seqs == {"pump-ü": 3, "b": 1}
    assert replay.last_id == 8



def test_rows_left_unacknowledged_go_into_sqlite_a_sync_interval_later(tmp_path, monkeypatch):
    """On the agent's event loop, with no flush after them: the timer that wakes the buffer
    thread's fsync first commits the journal's rows, so a row owed for SYNC_EVERY is in
    the WAL the thread syncs. Rows acknowledged in time never reach SQLite at all; rows of
    the file acknowledged at idle are deleted by the same timer's commit."""
    import asyncio

    import edge_agent.buffer as buffer_module
    from tests.helpers import wait_until

    monkeypatch.setattr(buffer_module, "SYNC_EVERY", 0.05)
    path = tmp_path / "b.sqlite3"

    async def scenario() -> None:
        outbox = SqliteOutbox(path, 1 << 30)
        ids = fill(outbox, "a", 5)
        outbox.ack(ids)  # the outbox is empty: the timer is cancelled
        fill(outbox, "a", 0)
        await asyncio.sleep(0.2)
        assert _in_sqlite(path) == 0
        fill(outbox, "a", 3)  # owed: the timer runs
        for _ in range(200):
            if _in_sqlite(path) == 3:
                break
            await asyncio.sleep(0.01)
        assert _in_sqlite(path) == 3 and journal_path(path).stat().st_size == 0
        outbox.ack([row.id for row in outbox.fetch(0, 10)])
        fill(outbox, "a", 0)  # their deletion journaled; the timer's commit deletes them
        assert _in_sqlite(path) == 3 and outbox.size_bytes() > 0
        for _ in range(200):
            if _in_sqlite(path) == 0:
                break
            await asyncio.sleep(0.01)
        assert _in_sqlite(path) == 0 and outbox.size_bytes() == 0  # an idle alert clears
        outbox.close()

    asyncio.run(scenario())
    wait_until(lambda: not journal_path(path).exists(), timeout=1, what="journal removed")


def test_zeroed_blocks_after_a_power_cut_are_a_torn_tail_not_damage(tmp_path):
    """A file system may keep a file's new length without its last blocks' data: zeros."""
    path = tmp_path / "b.sqlite3"
    _killed(path, """
        fill(outbox, "a", 10)
    """)
    with open(journal_path(path), "ab") as f:
        f.write(bytes(4096))
    log = LogSink()
    reopened = SqliteOutbox(path, 1 << 30, log=log)
    assert _seqs(reopened) == list(range(1, 11))
    assert log.events("buffer_journal_torn_tail")[0]["bytes_cut"] == 4096
    assert not log.events("buffer_journal_damaged")
    reopened.close()


def test_a_file_too_large_to_be_a_journal_is_never_loaded_and_is_set_aside(tmp_path):
    """Whatever sits at the journal's path is read with a bound: a start never loads a
    file larger than any journal the agent writes (hostile or not), it sets it aside."""
    path = tmp_path / "b.sqlite3"
    fill_outbox = SqliteOutbox(path, 1 << 30)
    fill(fill_outbox, "a", 3)
    fill_outbox.close()
    with open(journal_path(path), "wb") as f:
        f.truncate(3 * journal.MAX_BYTES)  # sparse: costs no disk
    log = LogSink()
    reopened = SqliteOutbox(path, 1 << 30, log=log)
    assert _seqs(reopened) == [1, 2, 3] and reopened.next_seq("a") > 3
    damaged = log.events("buffer_journal_damaged")
    assert damaged and "larger than any journal" in damaged[0]["problem"]
    assert Path(damaged[0]["moved_to"]).stat().st_size == 3 * journal.MAX_BYTES
    reopened.close()


def test_a_flush_larger_than_the_journal_allows_is_committed_to_sqlite(tmp_path, slow_clock):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 30)
    fill(outbox, "a", 2)
    assert _in_sqlite(path) == 0
    fill(outbox, "a", 3, size=journal.MAX_BYTES // 2)
    assert _in_sqlite(path) == 5 and journal_path(path).stat().st_size == 0
    assert journal.read(journal_path(path)).records == 0
    assert _seqs(outbox) == [1, 2, 3, 4, 5]
    outbox.close()


def _settled_rounds(rounds: int) -> str:
    """A child's body: `rounds` idle polls (ten rows, flushed, acknowledged, the
    acknowledgement flushed), every one past SYNC_EVERY; prints the state after them."""
    return f"""
        import edge_agent.buffer
        edge_agent.buffer.SYNC_EVERY = 0.0  # every flush after the first is past its clock
        from edge_agent.store.journal import journal_path
        from pathlib import Path
        sizes = []
        for _ in range({rounds}):
            outbox.ack(fill(outbox, "a", 10))
            fill(outbox, "a", 0)
            sizes.append(journal_path(Path(sys.argv[1])).stat().st_size)
        with sqlite3.connect(sys.argv[1]) as db:
            stored = db.execute("SELECT coalesce(max(seq), 0) FROM seqs").fetchone()[0]
        print(json.dumps({{"in_sqlite": in_sqlite(), "sizes": sizes, "stored_seq": stored}}))
    """


def test_a_journal_that_owes_nothing_is_not_put_into_sqlite_on_the_clock(tmp_path):
    """The idle agent's journal: every row acknowledged before the next poll. However late
    the flushes, none commits; a kill then replays nothing and the seqs go on without a gap
    (the journal held them)."""
    path = tmp_path / "b.sqlite3"
    state = json.loads(_killed(path, _settled_rounds(30)))
    assert state["in_sqlite"] == 0 and state["stored_seq"] == 0  # not one commit
    assert state["sizes"] == sorted(state["sizes"]) and state["sizes"][0] > 0  # never cut
    log = LogSink()
    reopened = SqliteOutbox(path, 1 << 30, log=log)
    assert reopened.fetch(0, 1000) == [] and reopened.depth() == 0  # delivered: not again
    assert reopened.next_seq("a") == 301  # no seq reused, none skipped
    assert not log.events("seq_resumed_after_reservation")
    reopened.close()


def test_a_settled_journal_lost_in_a_power_cut_never_lets_a_seq_be_reused(tmp_path):
    """The power cut took the journal's page cache (the file is empty after it) and the
    seqs only it held: the start sees the machine went down and resumes after the
    reservation."""
    from tests.test_machine_restart import _set_marker

    path = tmp_path / "b.sqlite3"
    _killed(path, _settled_rounds(30))
    journal_path(path).write_bytes(b"")
    _set_marker(path, "0f0e0d0c-another-boot")
    log = LogSink()
    reopened = SqliteOutbox(path, 1 << 30, log=log)
    assert reopened.next_seq("a") > 300
    assert log.events("seq_resumed_after_reservation")[0]["machine_restarted"] is True
    reopened.close()


def test_a_settled_journal_is_put_into_sqlite_at_its_size_bound(tmp_path):
    path = tmp_path / "b.sqlite3"
    bound = 16 * 1024
    state = json.loads(_killed(path, f"""
        edge_agent.buffer.SETTLED_JOURNAL_BYTES = {bound}
    """ + _settled_rounds(40)))
    sizes = state["sizes"]
    step = sizes[1] - sizes[0]  # one round's records
    assert max(sizes) < bound + 2 * step
    assert sizes.index(min(sizes[5:])) > 5  # cut (at least once) after growing
    assert state["in_sqlite"] == 0 and 0 < state["stored_seq"] <= 400  # seqs, no rows


def test_a_settled_journal_deleted_while_running_is_committed_within_a_sync_interval(
        tmp_path, monkeypatch):
    """Nothing cuts a settled journal for minutes, so the outbox watches it itself: once
    deleted, the next flush a SYNC_EVERY later commits its seqs and opens a new one."""
    import edge_agent.buffer as buffer_module

    monkeypatch.setattr(buffer_module, "SYNC_EVERY", 0.0)
    path = tmp_path / "b.sqlite3"
    log = LogSink()
    outbox = SqliteOutbox(path, 1 << 30, log=log)
    for _ in range(5):
        outbox.ack(fill(outbox, "a", 10))
        fill(outbox, "a", 0)
    journal_path(path).unlink()
    outbox.ack(fill(outbox, "a", 10))
    fill(outbox, "a", 0)
    assert journal_path(path).exists()  # a new journal
    assert log.events("buffer_journal_replaced")[0]["problem"] == "deleted"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq FROM seqs WHERE device = 'a'").fetchone()[0] >= 50
    outbox._stop_checkpointer()  # a kill now: the seqs are in SQLite and the new journal
    outbox._journal.close()
    outbox._close_db()
    reopened = SqliteOutbox(path, 1 << 30)
    assert reopened.next_seq("a") == 61
    reopened.close()
