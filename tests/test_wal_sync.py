"""The buffer's durability thread: the WAL fsynced after commits, checkpoints only now and then.

Why it matters: a checkpoint a second made the next commit restart the WAL, and SQLite
fsyncs a restarted WAL's header on the committing thread, the event loop's. So the thread
syncs the WAL itself (what bounds a power cut's loss) and checkpoints rarely.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from edge_agent.store.checkpoint import Checkpointer, file_identity
from edge_agent.store.sqlitefile import WAL_SIZE_LIMIT
from tests.helpers import wait_until


def writer(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    db.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    return db


@contextlib.contextmanager
def running(path: Path, checkpoint_after: float) -> Iterator[tuple[sqlite3.Connection,
                                                                    Checkpointer]]:
    """A writer on a new file and a checkpointer ticking every 20 ms; both closed after."""
    db = writer(path)
    checkpointer = Checkpointer(path, file_identity(path), every=0.02,
                                checkpoint_after=checkpoint_after)
    try:
        yield db, checkpointer
    finally:
        checkpointer.stop()
        db.close()


def wait_ticks(checkpointer: Checkpointer, n: int) -> None:
    start = checkpointer.ticks
    wait_until(lambda: checkpointer.ticks >= start + n, timeout=10, what=f"{n} ticks")


def test_the_wal_is_synced_after_a_commit_and_not_while_nothing_changes(tmp_path):
    path = tmp_path / "b.sqlite3"
    with running(path, checkpoint_after=3600) as (db, checkpointer):
        wait_ticks(checkpointer, 2)
        synced = checkpointer.syncs
        db.execute("INSERT INTO t VALUES (x'00')")
        wait_until(lambda: checkpointer.syncs > synced, timeout=10, what="a sync")
        synced = checkpointer.syncs
        wait_ticks(checkpointer, 5)
        assert checkpointer.syncs == synced  # nothing committed: no fsync
        db.execute("INSERT INTO t VALUES (x'01')")
        wait_until(lambda: checkpointer.syncs == synced + 1, timeout=10, what="the next sync")
        assert checkpointer.checkpoints == 0  # syncing is not checkpointing
        assert checkpointer.failures == 0


def test_a_checkpoint_comes_after_its_period_and_only_if_something_changed(tmp_path):
    path = tmp_path / "b.sqlite3"
    with running(path, checkpoint_after=0.1) as (db, checkpointer):
        db.execute("INSERT INTO t VALUES (x'00')")
        wait_until(lambda: checkpointer.checkpoints >= 1, timeout=10, what="a checkpoint")
        # the checkpoint copied the commit into the database file: a copy of the file
        # alone, without its WAL, holds it
        alone = tmp_path / "alone.sqlite3"
        alone.write_bytes(path.read_bytes())
        copy = sqlite3.connect(str(alone))
        assert copy.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
        copy.close()
        done = checkpointer.checkpoints
        wait_ticks(checkpointer, 15)  # three periods with nothing committed
        assert checkpointer.checkpoints == done
        db.execute("INSERT INTO t VALUES (x'01')")
        wait_until(lambda: checkpointer.checkpoints > done, timeout=10, what="the next one")


def test_a_wal_past_its_limit_is_checkpointed_before_its_period(tmp_path):
    path = tmp_path / "b.sqlite3"
    with running(path, checkpoint_after=3600) as (db, checkpointer):
        for _ in range(WAL_SIZE_LIMIT // 100_000 + 5):
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
        wait_until(lambda: checkpointer.checkpoints >= 1, timeout=10,
                   what="a checkpoint of the large WAL")
        db.execute("INSERT INTO t VALUES (x'00')")  # restarts the WAL: cut to the limit
        assert checkpointer.wal_bytes <= WAL_SIZE_LIMIT


def wal_salt(path: Path) -> bytes:
    """The WAL header's salt: SQLite draws a new one each time the WAL restarts."""
    with open(f"{path}-wal", "rb") as wal:
        return wal.read(32)[16:24]


def test_after_a_complete_checkpoint_the_thread_restarts_the_wal_not_the_writer(tmp_path):
    path = tmp_path / "b.sqlite3"
    db = writer(path)
    checkpointer = Checkpointer(path, file_identity(path), every=3600)  # no ticks: by hand
    try:
        db.execute("INSERT INTO t VALUES (x'00')")
        first = wal_salt(path)
        checkpointer.checkpoint()
        restarted = wal_salt(path)
        assert restarted != first and checkpointer.restarts == 1  # its write restarted it
        db.execute("INSERT INTO t VALUES (x'01')")
        assert wal_salt(path) == restarted  # the writer appended: no restart, no fsync
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    finally:
        checkpointer.stop()
        db.close()


def test_a_restart_that_cannot_get_the_lock_is_no_failure_and_comes_with_the_next(tmp_path):
    path = tmp_path / "b.sqlite3"
    db = writer(path)
    checkpointer = Checkpointer(path, file_identity(path), every=3600)
    try:
        db.execute("INSERT INTO t VALUES (x'00')")
        first = wal_salt(path)
        db.execute("BEGIN IMMEDIATE")  # the writer holds the lock through the checkpoint
        checkpointer.checkpoint()  # copies the WAL; its restarting write gives up
        assert checkpointer.restarts == 0 and checkpointer.failures == 0
        db.execute("INSERT INTO t VALUES (x'01')")
        db.execute("COMMIT")  # its transaction began before the checkpoint: it appends
        assert wal_salt(path) == first
        checkpointer.checkpoint()  # the lock is free now
        assert checkpointer.restarts == 1 and wal_salt(path) != first
        db.execute("INSERT INTO t VALUES (x'02')")
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    finally:
        checkpointer.stop()
        db.close()
