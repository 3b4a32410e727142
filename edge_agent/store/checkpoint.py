"""The buffer's background thread: WAL checkpoints, and a watch on the file itself.

Checkpoints (the only step that fsyncs) run here on a connection of their own, once a
second: run inline by SQLite's auto-checkpoint they stalled the event loop for 3 ms every
~4 MB of WAL. PASSIVE mode never blocks the writer. The WAL is bounded: `journal_size_limit`
truncates it whenever it restarts, and a WAL still past WAL_ESCALATE (checkpoints keep
failing or never complete) gets a TRUNCATE checkpoint. Failures are counted and logged
once per episode (`buffer_checkpoint_failed` / `_recovered`), and `wal_bytes` is reported.

The same tick checks that the file at the buffer's path is still the one the outbox has
open (device and inode): a deleted or replaced file is noticed within CHECKPOINT_EVERY and
reported in `file_problem`, which the outbox acts on from the event loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from edge_agent.store.drops import FailureEpisodes
from edge_agent.store.sqlitefile import WAL_SIZE_LIMIT

#: seconds between background WAL checkpoints and file checks
CHECKPOINT_EVERY = 1.0
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
                 every: float = CHECKPOINT_EVERY) -> None:
        self.path = path
        self.identity = identity
        self.log = log
        self.every = every
        self.episodes = FailureEpisodes(log, "buffer_checkpoint", path=str(path))
        #: why the file at `path` is no longer the buffer (set once, by this thread)
        self.file_problem: str | None = None
        self._stop = threading.Event()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=0.2)
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        context = contextvars.copy_context()  # its log lines carry the node, like the loop's
        self._thread = threading.Thread(target=context.run, args=(self._run,),
                                        name="buffer-checkpoint", daemon=True)
        self._thread.start()

    @property
    def wal_bytes(self) -> int:
        return _size(self.path.with_name(self.path.name + "-wal"))

    @property
    def failures(self) -> int:
        return self.episodes.failures

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.file_problem is None:
                self.watch()
            if self.file_problem is None:
                self.checkpoint()

    def watch(self) -> str | None:
        """Sets and returns `file_problem` if the path no longer holds the open buffer."""
        now = file_identity(self.path)
        if now is None:
            problem = "the buffer file disappeared"
        elif self.identity is not None and now != self.identity:
            problem = "the buffer file was replaced by another file"
        else:
            return None
        if self.file_problem is None:
            self.file_problem = problem
            if self.log is not None:
                self.log.error("buffer_file_lost", path=str(self.path), problem=problem)
        return problem

    def checkpoint(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if self.wal_bytes > WAL_ESCALATE:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            self.episodes.failed(str(exc))
            return
        self.episodes.succeeded()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
