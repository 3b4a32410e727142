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
