"""A power cut against a crash: the buffer records the boot it is open on.

Why it matters: the buffer thread skips the WAL's fsync when every committed message has been
acknowledged (most of the agent's idle CPU), so a power cut may take more than the last
second of commits: never a message still owed, but the seq numbers of delivered ones. The
next start must then continue after the seq reservation, never hand them out again; a crash
without a restart of the machine (the page cache keeps every commit) must not.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap

from edge_agent.buffer import SqliteOutbox
from edge_agent.store import boot
from tests.helpers import wait_until
from tests.test_buffer import LogSink, fill


def _marker(path) -> str | None:
    with sqlite3.connect(path) as db:
        found = db.execute("SELECT value FROM meta WHERE key = ?", (boot.MARKER,)).fetchone()
    return None if found is None else found[0]


def _set_marker(path, value: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (boot.MARKER, value))


def _killed_with_everything_acknowledged(path, count: int) -> None:
    """An agent that delivered `count` messages of device a, then was SIGKILLed."""
    script = textwrap.dedent(f"""
        import os, signal
        from edge_agent.buffer import SqliteOutbox
        outbox = SqliteOutbox({str(path)!r}, 1 << 20)
        for _ in range({count}):
            row = outbox.append("a", outbox.next_seq("a"), "t", b"payload")
            outbox.flush()
            outbox.ack([row])
        outbox.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9


def test_the_file_holds_the_boot_while_open_and_not_after_a_clean_close(tmp_path):
    path = tmp_path / "b.sqlite3"
    outbox = SqliteOutbox(path, 1 << 20)
    this_boot = boot.current_boot()
    assert this_boot  # Linux: /proc has it
    assert _marker(path) == this_boot
    fill(outbox, "a", 3)
    outbox.close()
    assert _marker(path) is None


def test_a_crash_without_a_machine_restart_continues_seq_without_a_gap(tmp_path):
    path = tmp_path / "b.sqlite3"
    _killed_with_everything_acknowledged(path, 25)
    log = LogSink()
    again = SqliteOutbox(path, 1 << 20, log=log)
    assert again.next_seq("a") == 26
    assert not log.events("buffer_opened_after_machine_restart")
    assert not log.events("seq_resumed_after_reservation")


def test_after_the_machine_went_down_under_the_agent_no_seq_is_handed_out_again(tmp_path):
    path = tmp_path / "b.sqlite3"
    _killed_with_everything_acknowledged(path, 25)
    # the machine restarted before the agent did: the file says it was open on another
    # boot, and may lack its last commits (the seqs of messages already delivered)
    _set_marker(path, "0f0e0d0c-another-boot")
    log = LogSink()
    again = SqliteOutbox(path, 1 << 20, log=log)
    seq = again.next_seq("a")
    assert seq > 25 + 1  # past the reservation, not where the file's seqs table says
    assert log.events("buffer_opened_after_machine_restart")
    jump = log.events("seq_resumed_after_reservation")[0]
    assert jump["machine_restarted"] is True and jump["device"] == "a"
    assert again.stats()["seq_skipped"] == jump["gap_at_most"]
    assert _marker(path) == boot.current_boot()  # open on this boot now
    again.close()
    log = LogSink()
    assert SqliteOutbox(path, 1 << 20, log=log).next_seq("a") == seq + 1  # clean: no gap
    assert not log.events("seq_resumed_after_reservation")


def _sync_counts_after(outbox: SqliteOutbox, step) -> tuple[int, int]:
    """(syncs, skipped syncs) the buffer thread made for the commit `step` makes."""
    checkpointer = outbox._checkpointer
    assert checkpointer is not None
    before = checkpointer.syncs + checkpointer.skipped_syncs
    step()

    def looked() -> bool:
        checkpointer.tick()  # as the thread does each second; either of them sees it
        return checkpointer.syncs + checkpointer.skipped_syncs > before
    wait_until(looked, timeout=10, what="the buffer thread's look at the commit")
    return checkpointer.syncs, checkpointer.skipped_syncs


def test_the_wal_is_synced_while_a_message_is_owed_and_not_once_all_are_acknowledged(
        tmp_path):
    # the WAL's own policy, without an event loop: no journal (whose rows reach the WAL by
    # the loop's timer: test_in_the_agent_the_thread_is_woken_... below)
    outbox = SqliteOutbox(tmp_path / "b.sqlite3", 1 << 20, journal=False)
    ids: list[int] = []
    syncs, skipped = _sync_counts_after(outbox, lambda: ids.extend(fill(outbox, "a", 2)))
    assert syncs >= 1  # two messages owed: the sync is what a power cut would spare
    outbox.ack(ids[:1])
    synced = _sync_counts_after(outbox, lambda: fill(outbox, "a", 1))[0]
    assert synced > syncs  # still owed
    outbox.ack(ids[1:] + [row.id for row in outbox.fetch(ids[-1], 10)])
    assert outbox.depth() == 0
    synced_then, skipped_then = _sync_counts_after(outbox, outbox.flush)  # the deletes
    assert synced_then == synced and skipped_then > skipped  # nothing owed: no fsync
    outbox.close()


def test_without_a_boot_id_every_commit_is_synced(tmp_path, monkeypatch):
    monkeypatch.setattr(boot, "current_boot", lambda: None)
    outbox = SqliteOutbox(tmp_path / "b.sqlite3", 1 << 20)
    ids = fill(outbox, "a", 1)
    outbox.ack(ids)
    syncs, skipped = _sync_counts_after(outbox, outbox.flush)
    assert syncs >= 1 and skipped == 0  # a power cut could not be told from a crash
    outbox.close()
    assert _marker(tmp_path / "b.sqlite3") is None


def test_in_the_agent_the_thread_is_woken_only_for_a_message_unacknowledged_for_a_second(
        tmp_path):
    """On an event loop the thread parks: a commit arms a one-second timer, the
    acknowledgement that empties the outbox disarms it (no wake-up at idle); a message left
    unacknowledged wakes the thread, which syncs it."""
    async def scenario() -> None:
        outbox = SqliteOutbox(tmp_path / "b.sqlite3", 1 << 20)
        checkpointer = outbox._checkpointer
        assert checkpointer is not None and checkpointer.parked_every is not None
        ids = fill(outbox, "a", 1)
        assert outbox._sync_timer is not None  # owed: the thread looks in a second
        outbox.ack(ids)
        assert outbox._sync_timer is None  # delivered first: nothing to wake it for
        synced = checkpointer.syncs
        fill(outbox, "a", 1)  # this one stays unacknowledged (the broker is away)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while checkpointer.syncs == synced:
            assert loop.time() < deadline, "the owed message was never synced"
            await asyncio.sleep(0.05)
        assert outbox._sync_timer is None  # fired; the next commit arms it again
        outbox.close()
    asyncio.run(scenario())
