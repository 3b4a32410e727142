"""The buffer's background thread: the WAL's fsync, checkpoints, and a watch on the file.

The loop never fsyncs (`synchronous=NORMAL`): what bounds a power cut's loss is this thread.
Once a second, if anything was committed since its last look (`PRAGMA data_version` on a
connection of its own), it fdatasyncs the WAL, which makes every commit written so far
survive a power cut (SQLite recovers a WAL's synced frames; this is what `synchronous=FULL`
does at each commit). Unless nothing is owed: when every message committed so far has been
acknowledged by the broker (`owes_sync`, asked after `data_version` was read, so it covers
every commit that read saw), a power cut can take nothing that is not already delivered,
and the sync is skipped (`skipped_syncs`). The seq numbers it could take back are the
outbox's to guard (`edge_agent.store.boot`); where it cannot, it always owes the sync.

Given `owes_sync`, the thread does not tick each second: it *parks*, looking every
PARKED_EVERY, and the outbox wakes it (`wake`) once a commit has held an unacknowledged
message for SYNC_EVERY (a timer on the event loop, cancelled when the acknowledgements
come first). At idle, where the PUBACK comes milliseconds after the commit, the thread then
sleeps through: on this machine each wake-up of a thread costs 100-150 us of CPU, the fsync
more (docs/performance.md, "Near idle"). Under load, or while the broker is away, the timer
fires each second and the thread syncs as before. A failing sync or checkpoint is retried
each SYNC_EVERY, parked or not.

Checkpoints, which copy the WAL into the database file and fsync both, run far less often:
when the WAL has grown past WAL_SIZE_LIMIT since it last restarted, or CHECKPOINT_AFTER
seconds after the last one if anything changed. Why not once a second: each complete
checkpoint makes the next commit restart the WAL, and SQLite fsyncs a restarted WAL's header
on the writer's thread, the event loop's, so a checkpoint a second cost the loop an fsync a
second (0.3-1.2 ms each) on top of the thread's two.

So after a complete checkpoint this thread restarts the WAL itself, with a one-row write of
its own (`meta`'s `wal_restarted`): the header's fsync is then this thread's, and the loop's
next commit appends to a WAL that has its header. On the rig (standard workload) the WAL
reached WAL_SIZE_LIMIT every 3 s, and each time the loop's next commit waited for that fsync.
A loop commit that comes while this write holds the lock waits for it (SQLite's busy
handler), as long as it would have taken to sync the header itself; if this write cannot get
the lock (0.2 s) the loop restarts the WAL as before.

Run inline by SQLite's auto-checkpoint, checkpoints stalled the event loop for 3 ms every
~4 MB of WAL, hence this thread. PASSIVE mode never blocks the writer. The WAL is bounded:
`journal_size_limit` truncates it whenever it restarts, and a WAL still past WAL_ESCALATE
(checkpoints keep failing or never complete) gets a TRUNCATE checkpoint. Failures of the
sync or the checkpoint are counted and logged once per episode (`buffer_checkpoint_failed` /
`_recovered`), a failing step is retried each SYNC_EVERY, and `wal_bytes` is reported.

The same tick checks that the file at the buffer's path is still the one the outbox has
open (device and inode), and so does the outbox on the loop while commits come (once a
SYNC_EVERY at most): a deleted or replaced file is noticed within SYNC_EVERY then, within
PARKED_EVERY when nothing is committed, and reported in `file_problem`, which the outbox
acts on from the event loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.store.drops import FailureEpisodes
from edge_agent.store.sqlitefile import WAL_SIZE_LIMIT

#: seconds between the WAL's fsyncs (when something was committed) and file checks: the
#: most a power cut can take
SYNC_EVERY = 1.0
#: seconds after a checkpoint that the next one is due, if anything was committed since
#: (the WAL's size limit is what triggers them under load: every 3 s on the standard
#: workload; at idle this does, and each costs two fsyncs and a WAL restart)
CHECKPOINT_AFTER = 60.0
#: seconds between a parked thread's looks (checkpoints due, the file watch when nothing
#: is committed; see the module's docstring)
PARKED_EVERY = 10.0
#: a WAL larger than this gets a TRUNCATE checkpoint (which waits for the writer)
WAL_ESCALATE = 64 * 1024 * 1024


def file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Checkpointer:
    def __init__(self, path: Path, identity: tuple[int, int] | None, log: Any = None,
                 every: float = SYNC_EVERY, checkpoint_after: float = CHECKPOINT_AFTER,
                 owes_sync: Callable[[], bool] | None = None,
                 parked_every: float | None = None) -> None:
        self.path = path
        #: whether a commit may hold something the broker has not acknowledged (called on
        #: this thread; None: always)
        self.owes_sync = owes_sync
        #: None: the thread looks every `every`; else it parks (looks this often, or when
        #: woken): for an owner that wakes it (`wake`) when a sync is owed
        self.parked_every = parked_every
        self.wal_path = path.with_name(path.name + "-wal")
        self.identity = identity
        self.log = log
        self.every = every
        self.checkpoint_after = checkpoint_after
        self.episodes = FailureEpisodes(log, "buffer_checkpoint", path=str(path))
        #: why the file at `path` is no longer the buffer (set once, by this thread)
        self.file_problem: str | None = None
        #: counts of what this thread did, for tests and the docs' figures
        self.ticks = 0
        self.syncs = 0
        self.skipped_syncs = 0  # commits seen with nothing owed in them: no fsync needed
        self.checkpoints = 0
        self.restarts = 0  # WAL restarts this thread made (and the loop did not have to)
        self._stopping = False
        self._wake = threading.Event()
        self._watch_lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=0.2)
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._synced_version: int | None = None  # data_version at the last sync
        self._checkpointed_version: int | None = None  # ... at the last checkpoint
        self._last_checkpoint = time.monotonic()
        context = contextvars.copy_context()  # its log lines carry the node, like the loop's
        self._thread = threading.Thread(target=context.run, args=(self._run,),
                                        name="buffer-checkpoint", daemon=True)
        self._thread.start()

    @property
    def wal_bytes(self) -> int:
        return _size(self.wal_path)

    @property
    def failures(self) -> int:
        return self.episodes.failures

    def wake(self) -> None:
        """Look now (from any thread): a commit has held an unacknowledged message for
        SYNC_EVERY."""
        self._wake.set()

    def _run(self) -> None:
        wait = self.every
        while True:
            self._wake.wait(wait)
            if self._stopping:
                return
            self._wake.clear()
            if self.file_problem is None:
                self.watch()
            if self.file_problem is None:
                self.tick()
            self.ticks += 1
            parked = self.parked_every
            wait = parked if parked is not None and not self.episodes.in_episode else self.every

    def watch(self) -> str | None:
        """Sets and returns `file_problem` if the path no longer holds the open buffer.
        Called by this thread and, while commits come, by the outbox on the loop."""
        now = file_identity(self.path)
        if now is None:
            problem = "the buffer file disappeared"
        elif self.identity is not None and now != self.identity:
            problem = "the buffer file was replaced by another file"
        else:
            return None
        with self._watch_lock:  # logged once, whichever thread sees it first
            if self.file_problem is None:
                self.file_problem = problem
                if self.log is not None:
                    self.log.error("buffer_file_lost", path=str(self.path), problem=problem)
        return problem

    def tick(self) -> None:
        """Syncs the WAL if anything was committed since the last sync; checkpoints if due."""
        try:
            # fetchall: the statement runs to its end, so no read transaction stays open
            # (one would keep the writer from restarting the WAL)
            version = self._db.execute("PRAGMA data_version").fetchall()[0][0]
            if version != self._synced_version:
                owes_sync = self.owes_sync
                if owes_sync is None or owes_sync():
                    self._sync_wal()
                else:
                    self.skipped_syncs += 1
                self._synced_version = version
            if self._checkpoint_due(version):
                self.checkpoint()
                self._checkpointed_version = version
        except (sqlite3.Error, OSError) as exc:
            self._synced_version = None  # retried at the next tick, changed or not
            self.episodes.failed(str(exc))
            return
        self.episodes.succeeded()

    def _checkpoint_due(self, version: int) -> bool:
        if self.episodes.in_episode:
            return True  # a failing checkpoint is retried every tick
        if version == self._checkpointed_version:
            return False
        return (self.wal_bytes > WAL_SIZE_LIMIT
                or time.monotonic() - self._last_checkpoint >= self.checkpoint_after)

    def _sync_wal(self) -> None:
        try:
            fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return  # no WAL (yet, or any more): nothing committed is only in it
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.syncs += 1

    def checkpoint(self) -> None:
        """Raises sqlite3.Error if it fails (`tick` counts it)."""
        (_, frames, done), = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if self.wal_bytes > WAL_ESCALATE:
            (_, frames, done), = self._db.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self._last_checkpoint = time.monotonic()
        self.checkpoints += 1
        if frames > 0 and done == frames:  # all of it copied: the next write restarts it
            self._restart_wal()

    def _restart_wal(self) -> None:
        """Makes the first write to the emptied WAL (so its header's fsync is this thread's,
        not the loop's). Not getting the lock is no failure: the loop's commit restarts it."""
        try:
            # its commit needs no fsync of its own (FULL would add one while it holds the
            # lock the loop's next commit may wait for); set here, where it is needed: the
            # pragma opens the file's WAL index, which then stays open with the connection
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('wal_restarted', ?)",
                             (str(self.restarts + 1),))
        except sqlite3.OperationalError:
            return  # busy, or a file without the table: the writer restarts the WAL
        self.restarts += 1

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
