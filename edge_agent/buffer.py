"""The durable outbox: telemetry in SQLite (WAL mode) until the broker acknowledges it.

Why it is shaped this way:
- Group commit. `append` only queues a row in memory; the runtime calls `flush()` once per
  event-loop iteration, which inserts the batch and the devices' new `seq` values in one
  transaction. The publisher reads (`fetch`) only committed rows, so nothing is published
  before it is on disk, and a commit costs one WAL append per batch, not per reading.
- `synchronous=NORMAL` in WAL mode: a commit survives the agent being killed (the WAL is in
  the OS page cache), and the event loop never waits for an fsync; after a power cut the
  last transactions since the WAL was synced (each second) may be missing.
- The WAL's fsync and the checkpoints run in a thread of their own, which also watches the
  file (`edge_agent.store.checkpoint`). The fsync is skipped when every committed message
  has been acknowledged (nothing owed can be lost): the file records the boot it is open
  on, so a start after the machine went down under the agent knows its last commits may be
  missing and resumes the seqs after their reservation (`edge_agent.store.boot`). The
  thread sleeps until a commit has held an unacknowledged message for SYNC_EVERY (a timer
  on the loop, armed by `flush`, cancelled by the `ack` that empties the outbox), and the
  file watch runs on the loop too, once a SYNC_EVERY at most, while commits come.
- Acknowledgements delete their rows in the next flush's transaction, so a poll costs one
  commit, not two. Until then the rows are counted as gone and never fetched again.
- Every row carries a CRC32 and is checked on the way out (`edge_agent.store.rows`). A
  row that fails is never published: it is moved to the `quarantine` table (the last
  QUARANTINE_KEEP are kept for inspection), counted and logged with its device and seq
  range, and the rows after it go on. Nothing a row holds can raise out of `fetch`.
- The live window is not read back. The rows a commit of this process wrote are kept (as
  `Row`s, the very objects the commit stored) until the publisher has taken them, and
  `fetch` hands those out without a query: on the standard workload that is every row, and
  an empty `fetch` (the publisher's cursor at the end) costs no query either. The read-back
  check is there for rows that may have rotted on disk since they were written: a backlog
  from before a restart, or one that outgrew FRESH_ROWS while the broker was away. A row
  that the commit just returned for is on disk (the contract: stored before published),
  and what is published from memory is exactly what was stored, not a second reading of
  it. Anything that changes the file's rows behind the outbox's back (a rebuild, the move
  to memory and back, the oldest rows dropped for `max_bytes`) forgets or trims this
  window, so from then on those rows are read, checked, from the file.
- `seq` lives in its own table, written in the same transaction as the messages that use
  it, and is reserved in blocks in a state file beside the buffer
  (`edge_agent.store.seqs`), so a lost or recreated buffer never reuses a seq number.
- Ids are assigned here (rowid order = append order), so replay in id order is delivery in
  order per device.
- `max_bytes` counts topic and payload bytes as stored plus ROW_OVERHEAD per row, the same
  definition as the memory outbox; when a commit would exceed it, the oldest rows go in the
  same transaction, counted in `dropped`.
- Rows written while a backlog builds up (more than COMPRESS_BACKLOG waiting) are stored
  zlib-compressed, so `max_bytes` rides out a several times longer outage.
- The file can go wrong in two ways, handled apart:
  * it is lost or damaged (deleted, replaced by another file, corrupt pages): the outbox
    *rebuilds* it without a restart: every row still readable (the open connection still
    reads a deleted file) is copied, as stored, into a new file that replaces it; a
    replaced or corrupt file is moved aside (`<name>.replaced-<time>`, `.corrupt-<time>`);
  * the disk will not take writes (full, read-only, I/O errors): the outbox moves its
    readable backlog into a `MemoryOutbox` (same limit), keeps going, and says why in
    `degraded`. A buffer that cannot even be opened is read read-only for its backlog.
    Every `retry_every` seconds and at close it tries to build a new file from the memory
    buffer, and is durable again as soon as the disk lets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from bisect import bisect_right
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any
from zlib import crc32

from edge_agent.store import boot, journal
from edge_agent.store.checkpoint import PARKED_EVERY, SYNC_EVERY, Checkpointer, file_identity
from edge_agent.store.drops import DropEpisodes, FailureEpisodes
from edge_agent.store.journal import MAX_BYTES as JOURNAL_MAX_BYTES
from edge_agent.store.journal import Journal, encode_record, journal_path
from edge_agent.store.memory import MemoryOutbox
from edge_agent.store.rows import (
    BadRow,
    Row,
    checksum,
    decode,
    encode,
    row_size,
    seq_ranges,
)
from edge_agent.store.seqs import SeqAllocator
from edge_agent.store.sqlitefile import (
    COLUMNS,
    INSERT,
    INSERT_OR_IGNORE,
    PAGE,
    RAISE_SEQ,
    SET_JOURNAL_UPTO,
    SIZE_SQL,
    UPSERT_SEQ,
    connect,
    delete_rows,
    is_corrupt,
    new_generation,
    open_read_only,
    quarantine_rows,
    read_header,
    read_journal_upto,
    remove_database,
    remove_wal,
)
from edge_agent.store.statefile import StateFile

#: rows waiting beyond which new rows are stored compressed (a backlog, not the live window)
COMPRESS_BACKLOG = 256
#: seconds between attempts to get back to a durable file while buffering in memory
DURABLE_RETRY = 30.0
#: rows read per query when a file is salvaged (rebuilt or moved to memory)
SALVAGE_PAGE = 512
#: rows committed by this process that `fetch` may hand out from memory (the live window);
#: past this (the publisher is away or behind) they are forgotten and read from the file
FRESH_ROWS = COMPRESS_BACKLOG
#: acknowledgements of rows in the file that the journal may hold until the next commit:
#: the few in flight when it last took the journal's rows. More (a backlog drained) are
#: deleted at once, so the bytes they free (and the end of a drop episode) show at once
JOURNAL_FILE_ACKS = 64
#: a journal that owes nothing (every row in it acknowledged, no deletion waiting) is not
#: put into SQLite on the SYNC_EVERY clock but when it reaches this size: at idle a commit
#: each second was most of what a poll cost the agent (docs/performance.md, "Near idle")
SETTLED_JOURNAL_BYTES = 256 * 1024
_row_id = itemgetter(0)


def seq_state_path(buffer_path: Path) -> Path:
    """The seq reservations live beside the buffer, in a file of their own."""
    return buffer_path.with_name(buffer_path.name + ".seq.json")


class SqliteOutbox:
    """Store-and-forward buffer at `path`, bounded by `max_bytes` of messages."""

    def __init__(self, path: Path | str, max_bytes: int, log: Any = None,
                 retry_every: float = DURABLE_RETRY, journal: bool = True) -> None:
        self.path = Path(path)
        self.retry_every = retry_every
        self.max_bytes = max_bytes
        self.log = log
        self.degraded: str | None = None
        self.quarantined = 0  # rows that failed their check: never published
        self.lost = 0  # rows that could not be read back at all (damaged file)
        self.recoveries = 0  # buffer files rebuilt while running (lost, replaced, corrupt)
        self._last_recovery: tuple[float, str] | None = None  # (monotonic time, problem)
        self.seqs = SeqAllocator(StateFile(seq_state_path(self.path), "seq state", log), log)
        self._dropped = 0
        self._checkpoint_failures = 0  # of checkpointers already stopped
        self._db: sqlite3.Connection | None = None
        self._memory: MemoryOutbox | None = None
        self._pending: list[Row] = []
        #: rows committed by this process and not yet handed out, in id order; every
        #: committed row with an id above _fresh_after is in it (see fetch)
        self._fresh: list[Row] = []
        self._fresh_after = 0
        self._acked: list[int] = []  # acknowledged, deleted by the next flush
        self._gone_max = 0  # the highest id in _acked and _bad
        self._bad: dict[int, str] = {}  # quarantined id -> reason, moved by the next flush
        self._checkpointer: Checkpointer | None = None
        self._last_id = 0
        self._depth = 0
        #: this boot's id; where there is one, an open file records it (durably), so the
        #: fsync may be skipped when nothing is owed: a power cut's lost seqs are caught at
        #: the next start
        self._boot = boot.current_boot()
        #: the machine went down while an agent had the file open (found at start)
        self._went_down = False
        self._sync_timer: asyncio.TimerHandle | None = None  # wakes the buffer thread
        self._watch_at = 0.0  # monotonic time of the loop's next look at the file
        self._bytes = 0
        self._episodes = DropEpisodes(log, max_bytes)
        self._retries = FailureEpisodes(log, "buffer_durable_retry", path=str(self.path))
        self._retry_at = 0.0  # monotonic time of the next attempt to leave memory
        # the journal (edge_agent.store.journal): rows written to it and not yet in SQLite
        # nor acknowledged, in id order; every id above _spilled_upto is one of them, a
        # pending row, or acknowledged
        self._journal = Journal(journal_path(self.path), log) if journal else None
        self._journal_rows: dict[int, Row] = {}
        self._journal_seqs: dict[str, int] = {}  # seqs journaled, not yet in SQLite
        #: acknowledgements of rows in the file, journaled: deleted by the next commit (an
        #: acknowledgement never forces one: each commit's rows would force the next)
        self._file_acks: list[int] = []
        self._journal_written = False  # records since SQLite last recorded journal_upto
        self._journal_until = 0.0  # monotonic time by which the journal goes into SQLite
        self._spilled_upto = 0
        #: the journal lost records: seqs it held may have been used
        self._journal_damaged = False
        try:
            stored, generation = self._open()
        except (sqlite3.Error, OSError) as exc:
            self._start_degraded(exc)
            return
        self.seqs.resume(stored, generation,
                         trusted=not (self._went_down or self._journal_damaged))
        self._forget_fresh()
        self._start_checkpointer()
        if self._journal is not None:
            self._journal.open_empty()

    # -- opening -------------------------------------------------------------------------
    def _open(self) -> tuple[dict[str, int], str | None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            seqs, generation = self._connect()
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise  # locked, read-only, disk full: not the file's fault
            aside = self._move_aside("corrupt")
            self._log("error", "buffer_corrupt_moved_aside", path=str(self.path),
                      moved_to=str(aside), error=str(exc))
            seqs, generation = self._connect()
            self._salvage(aside)
        for device, seq in self._replay_journal().items():
            seqs[device] = max(seq, seqs.get(device, 0))
        self._spilled_upto = self._last_id
        return seqs, generation

    def _read_journal(self, upto: int) -> journal.Replay:
        """The journal left by the last run: a torn tail is cut (a write never finished,
        so never published); damage is moved aside and makes the seqs doubtful."""
        path = journal_path(self.path)
        replay = journal.read(path)
        if replay.damage is not None:
            self._journal_damaged = True
            aside = journal.move_aside(path, "corrupt")
            self._log("error", "buffer_journal_damaged", path=str(path), problem=replay.damage,
                      records_read=replay.records, bytes_unread=replay.damaged_bytes,
                      moved_to=str(aside) if aside else None)
        elif replay.torn_bytes:
            self._log("warning", "buffer_journal_torn_tail", path=str(path),
                      records_read=replay.records, bytes_cut=replay.torn_bytes)
        self._last_id = max(self._last_id, replay.last_id, upto)
        return replay

    def _replay_journal(self) -> dict[str, int]:
        """Puts the journal's rows that the file does not account for into it (see
        `edge_agent.store.journal`); returns the seqs the journal holds."""
        db = self._db
        assert db is not None
        upto = read_journal_upto(db)
        replay = self._read_journal(upto)
        if not replay.records:
            return {}
        rows = replay.keep_after(upto)
        db.execute("BEGIN IMMEDIATE")
        try:
            delete_rows(db, sorted(replay.file_acks))  # delivered: never again
            db.executemany(INSERT_OR_IGNORE, [encode(*row, False) for row in rows])
            db.executemany(RAISE_SEQ, replay.seqs.items())
            db.execute(SET_JOURNAL_UPTO, (self._last_id,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._depth, self._bytes = db.execute(
            f"SELECT count(*), coalesce(sum({SIZE_SQL}), 0) FROM messages").fetchone()
        self._log("info", "buffer_journal_replayed", path=str(journal_path(self.path)),
                  records=replay.records, rows=len(rows))
        return replay.seqs

    def _salvage(self, aside: Path) -> None:
        """Copies what can still be read of a damaged file (moved aside) into the new one."""
        old = open_read_only(aside)
        if old is None:
            return  # not a database at all: nothing to read
        db = self._db
        assert db is not None
        try:
            with contextlib.suppress(sqlite3.Error):
                self._last_id = max(self._last_id, old.execute(
                    "SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
            with contextlib.suppress(sqlite3.Error):  # the journal's rows it took stay taken
                self._last_id = max(self._last_id, read_journal_upto(old))
            copied = self._copy_rows(old, db)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._log("error", "buffer_salvage_failed", moved_to=str(aside), error=str(exc))
            return
        finally:
            old.close()
        self._depth, self._bytes = db.execute(
            f"SELECT count(*), coalesce(sum({SIZE_SQL}), 0) FROM messages").fetchone()
        self._log("warning", "buffer_salvaged", path=str(self.path), moved_to=str(aside),
                  kept=copied, lost=self.lost, quarantined=self.quarantined)

    def _connect(self) -> tuple[dict[str, int], str | None]:
        """Opens the file at `path`: (the seqs it holds, its generation)."""
        db = connect(self.path)
        try:
            seqs, generation = read_header(db)
            depth, size, last = db.execute(
                f"SELECT count(*), coalesce(sum({SIZE_SQL}), 0), coalesce(max(id), 0) "
                "FROM messages").fetchone()
            self._mark_open(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self._depth, self._bytes = depth, size
        self._last_id = max(self._last_id, last)
        if depth:
            self._log("info", "buffer_backlog", path=str(self.path), messages=depth,
                      size_bytes=size)
        return seqs, generation

    def _mark_open(self, db: sqlite3.Connection) -> None:
        """Records the boot the file is open on, synced before anything is published."""
        if self._boot is None:
            return  # no boot id: every commit is synced, as before
        db.execute("PRAGMA synchronous=FULL")  # this one commit fsyncs the WAL
        try:
            found = boot.swap_marker(db, self._boot)
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        if boot.went_down_under(found, self._boot):
            self._went_down = True
            self._log("warning", "buffer_opened_after_machine_restart", path=str(self.path),
                      detail="the machine went down while an agent had the buffer open: "
                             "commits of its last second may be missing")

    def _owes_sync(self) -> bool:
        """On the buffer thread: whether a commit may hold a message not yet acknowledged
        (rows still pending count: their commit may have just returned)."""
        return self._depth > 0 or bool(self._pending)

    def _start_checkpointer(self) -> None:
        """The thread parks where there is an event loop to time its wake-ups (the agent);
        elsewhere (scripts, bench/) it looks every SYNC_EVERY."""
        marked = self._boot is not None
        parks = marked and _running_loop() is not None
        self._checkpointer = Checkpointer(
            self.path, file_identity(self.path), self.log,
            owes_sync=self._owes_sync if marked else None,
            parked_every=PARKED_EVERY if parks else None)

    def _arm_sync(self) -> None:
        """After a commit that left messages unacknowledged: the buffer thread looks in
        SYNC_EVERY unless the outbox empties first (no event loop: it looks each second)."""
        loop = _running_loop()
        if loop is not None:
            self._sync_timer = loop.call_later(SYNC_EVERY, self._sync_due)

    def _sync_due(self) -> None:
        """A SYNC_EVERY after a flush left messages unacknowledged: those still only in the
        journal go into SQLite, whose WAL the buffer thread then syncs."""
        self._sync_timer = None
        if (self._journal_rows or self._file_acks) and self._memory is None and (
                self._db is not None):
            self._commit()
            self._disarm_sync()  # armed again by the next flush, not by this commit
        if self._checkpointer is not None:
            self._checkpointer.wake()

    def _disarm_sync(self) -> None:
        timer, self._sync_timer = self._sync_timer, None
        if timer is not None:
            timer.cancel()

    def _stop_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpoint_failures += self._checkpointer.failures
            self._checkpointer = None

    def _start_degraded(self, exc: BaseException) -> None:
        """The file cannot be opened for writing: read what it holds, carry on in memory."""
        stored: dict[str, int] = {}
        generation = None
        upto = 0
        source = open_read_only(self.path)
        if source is not None:
            with contextlib.suppress(sqlite3.Error):
                stored, generation = read_header(source)
                self._last_id = source.execute(
                    "SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
            with contextlib.suppress(sqlite3.Error):
                self._went_down = boot.went_down_under(boot.read_marker(source), self._boot)
            with contextlib.suppress(sqlite3.Error):
                upto = read_journal_upto(source)
        # the file's own rows first; without its journal_upto, none of them twice
        after = max(upto, self._last_id)
        replay = self._read_journal(upto)  # left in place: a later start replays it again
        self._journal_rows = {row.id: row for row in replay.keep_after(after)}
        self._file_acks = sorted(replay.file_acks)  # not read into memory (see _gone)
        self._gone_max = max(self._file_acks, default=0)
        for device, seq in replay.seqs.items():
            stored[device] = max(seq, stored.get(device, 0))
        self.seqs.resume(stored, generation,
                         trusted=not (self._went_down or self._journal_damaged))
        self._degrade(exc, "open", source)
        if source is not None:
            with contextlib.suppress(sqlite3.Error):
                source.close()

    # -- the Outbox interface ------------------------------------------------------------
    @property
    def dropped(self) -> int:
        return self._dropped + (self._memory.dropped if self._memory else 0)

    def next_seq(self, device: str) -> int:
        return self.seqs.next(device)

    def append(self, device: str, seq: int, topic: str, payload: bytes) -> int:
        if self._memory is not None:
            return self._memory.append(device, seq, topic, payload)
        self._last_id += 1
        self._pending.append(Row(self._last_id, device, seq, topic, payload))
        return self._last_id

    def flush(self) -> None:
        """Commits the queued rows and seqs in one transaction, dropping the oldest if full."""
        if self._memory is not None:
            if time.monotonic() >= self._retry_at:
                self._back_to_disk()
            return
        self._check_file()
        if self._db is None or not (self._pending or self.seqs.dirty or self._acked
                                    or self._bad):
            return
        if self._journal is not None and self._journal.usable and self._to_journal():
            return
        self._commit()

    def _to_journal(self) -> bool:
        """The flush as one journal record, where the live window allows it (see
        `edge_agent.store.journal`); False: it goes to SQLite."""
        journal = self._journal
        assert journal is not None
        pending, acked = self._pending, self._acked
        now = time.monotonic()
        if journal.size:
            if now >= self._journal_until:
                if not self._journal_settled():
                    return False
                self._journal_until = now + SYNC_EVERY  # nothing owed: it stays a journal
        else:
            self._journal_until = now + SYNC_EVERY
        if (self._bad or len(self._fresh) + len(pending) > FRESH_ROWS
                or self._depth + len(pending) > COMPRESS_BACKLOG):
            return False  # a quarantine or a backlog
        in_file: list[int] = []
        if acked and min(acked) <= self._spilled_upto:
            upto = self._spilled_upto
            in_file = [row_id for row_id in acked if row_id <= upto]
            if len(self._file_acks) + len(in_file) > JOURNAL_FILE_ACKS:
                return False
        added = sum(row_size(row.topic, row.payload) for row in pending)
        if self._bytes + added > self.max_bytes:
            return False  # the oldest rows must go: that is SQLite's
        seqs = self.seqs.dirty
        record = encode_record(pending, acked, seqs)
        if journal.size + len(record) > JOURNAL_MAX_BYTES:
            return False  # the journal stays small: a start reads it whole
        if not journal.append(record):
            return False
        self._journal_written = True
        journaled = self._journal_rows
        for row in pending:
            journaled[row.id] = row
        self._journal_seqs.update(seqs)
        self._depth += len(pending)
        self._bytes += added
        self._keep_fresh(0, bool(acked))
        self._file_acks += in_file
        if (self._depth or self._file_acks) and self._sync_timer is None:
            self._arm_sync()  # its commit takes what the journal owes, or deletes
        pending.clear()
        seqs.clear()
        self._acked = []
        self._gone_max = max(self._file_acks) if self._file_acks else 0
        return True

    def _journal_settled(self) -> bool:
        """Whether the journal may outlive SYNC_EVERY uncut: it owes nothing (its rows are
        all acknowledged, no deletion of a file row waits in it), it is small, and a power
        cut is caught at start (a boot id), so the seqs only it holds are safe: a kill
        leaves the file to replay, and a machine that went down has its seqs resumed after
        their reservation (`edge_agent.store.seqs`)."""
        journal = self._journal
        return (not self._journal_rows and not self._file_acks and self._boot is not None
                and journal is not None and journal.size < SETTLED_JOURNAL_BYTES)

    def _commit(self) -> None:
        """The journal's rows, the queued rows, the seqs and the deletions in one SQLite
        transaction; the oldest rows dropped if full; then the journal is cut."""
        db = self._db
        assert db is not None
        seqs = self.seqs.dirty
        journaled = self._journal_rows
        # stored plain, as they would have been when journaled (no backlog then)
        spilled = self._stored_rows(list(journaled.values()), False) if journaled else []
        rows = self._stored_rows(self._pending)
        added = sum(row_size(row[3], row[4]) for row in rows)
        acked, bad = self._acked, self._bad
        upto = self._spilled_upto
        # acknowledged journal rows left in ack(): only the file's rows are deleted
        in_file = [row_id for row_id in acked if row_id <= upto] if (
            acked and max(acked) > upto) else acked
        if self._file_acks:
            in_file = self._file_acks + in_file
        if self._journal_seqs:
            seqs = {**self._journal_seqs, **seqs}
        try:
            # IMMEDIATE: the write lock at once, through the busy handler. A deferred BEGIN
            # reads first (the acknowledged rows' sizes), and a write by the buffer thread
            # in between (its WAL restart) then failed the upgrade with `database is
            # locked` at once (SQLITE_BUSY_SNAPSHOT: no busy wait), sending the buffer to
            # memory
            db.execute("BEGIN IMMEDIATE")
            if spilled:  # first: a quarantined or dropped row may be one of them
                db.executemany(INSERT, spilled)
            removed, freed_by_acks = delete_rows(db, in_file) if in_file else (0, 0)
            moved, freed_by_bad = quarantine_rows(db, bad) if bad else (0, 0)
            db.executemany(INSERT, rows)
            db.executemany(UPSERT_SEQ, seqs.items())
            if self._journal_written:
                db.execute(SET_JOURNAL_UPTO, (self._last_id,))
            dropped, freed, cutoff = 0, 0, 0
            size = self._bytes - freed_by_acks - freed_by_bad + added  # after this transaction
            if size > self.max_bytes:
                dropped, freed, cutoff = self._drop_oldest(db, size - self.max_bytes)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._failed(exc, "commit")
            return
        # ack() and quarantine already counted their rows out; some may have been dropped
        self._depth += len(self._pending) - dropped + len(in_file) - removed + len(bad) - moved
        self._bytes += added - freed - freed_by_acks - freed_by_bad
        self._keep_fresh(cutoff, bool(acked or bad))
        if self._depth and self._sync_timer is None and self._boot is not None:
            self._arm_sync()
        self._pending.clear()
        self.seqs.dirty.clear()
        self._spilled()
        self._acked = []
        self._bad = {}
        self._gone_max = 0
        if dropped:
            self._dropped += dropped
            self._episodes.dropped(dropped, self._bytes)
        if freed_by_acks:
            self._episodes.check(self._bytes)

    def _spilled(self) -> None:
        """After a transaction that holds every journaled row: the journal is cut."""
        self._forget_journaled()
        journal = self._journal
        if journal is not None and (journal.size or not journal.usable):
            journal.cut()

    def _forget_journaled(self) -> None:
        """What the journal held is accounted for elsewhere (the file, or memory)."""
        self._journal_rows = {}
        self._journal_seqs = {}
        self._file_acks = []
        self._journal_written = False
        self._spilled_upto = self._last_id

    def _stored_rows(self, rows: list[Row], backlog: bool | None = None,
                     ) -> list[tuple[int, str, int, str, bytes, int, int]]:
        """Rows as stored: compressed while a backlog is building up."""
        if backlog is None:
            backlog = self._depth + len(self._pending) > COMPRESS_BACKLOG
        if backlog:
            return [encode(i, d, s, t, p, True) for i, d, s, t, p in rows]
        return [(i, d, s, t, p, 0, crc32(p, crc32(b"%d\x00%s\x00%d\x00%s\x00%d\x00" % (
            i, d.encode(), s, t.encode(), 0)))) for i, d, s, t, p in rows]  # = encode

    def _keep_fresh(self, dropped_upto: int, deleted: bool) -> None:
        """After a commit: its rows join the live window (see fetch); the rows it deleted
        leave it (acknowledged and quarantined ones if `deleted`, those dropped for
        `max_bytes`: ids up to `dropped_upto`); a window grown past FRESH_ROWS is
        forgotten: those rows are a backlog now, read from the file."""
        fresh = self._fresh
        if deleted and fresh and fresh[0].id <= self._gone_max:  # handed out, still held
            gone = self._gone() or set()  # (a new session may start before them)
            fresh[:] = [row for row in fresh if row.id not in gone]
        if len(fresh) + len(self._pending) > FRESH_ROWS:
            self._forget_fresh()
            return
        fresh.extend(self._pending)
        if dropped_upto:
            del fresh[:bisect_right(fresh, dropped_upto, key=_row_id)]
            self._fresh_after = max(self._fresh_after, dropped_upto)

    def _forget_fresh(self) -> None:
        """From here on every row committed so far is read from the file, checked."""
        self._fresh = []
        self._fresh_after = self._last_id

    def _drop_oldest(self, db: sqlite3.Connection, excess: int) -> tuple[int, int, int]:
        """Deletes the oldest rows freeing at least `excess` bytes; keeps the newest row.
        Returns (rows, bytes, the highest id deleted or 0)."""
        count, freed, cutoff = 0, 0, None
        newest = self._last_id
        oldest_first = db.execute(f"SELECT id, {SIZE_SQL} FROM messages ORDER BY id")
        for row_id, size in oldest_first:
            if freed >= excess or row_id == newest:
                break
            count, freed, cutoff = count + 1, freed + size, row_id
        oldest_first.close()
        if cutoff is not None:
            db.execute("DELETE FROM messages WHERE id <= ?", (cutoff,))
        return count, freed, cutoff or 0

    def fetch(self, after_id: int, limit: int) -> list[Row]:
        """Up to `limit` checked rows after `after_id`; bad rows are quarantined, not returned.

        Past `_fresh_after` every committed row is in the live window, so those come from
        memory (see the module's docstring); the cursor moving on lets go of what it passed.
        """
        self._check_file()
        if after_id >= self._fresh_after and self._memory is None and self._db is not None:
            fresh = self._fresh
            if not fresh:
                return []
            if fresh[0].id <= after_id:  # handed out before: the publisher has moved on
                del fresh[:bisect_right(fresh, after_id, key=_row_id)]
                self._fresh_after = after_id
            gone = self._gone(after_id)
            if gone is None:
                return fresh[:limit]
            return [row for row in fresh if row.id not in gone][:limit]
        for _ in range(2):  # a damaged file is rebuilt once; a second failure goes to memory
            if self._memory is not None:
                return self._memory.fetch(after_id, limit)
            try:
                rows = self._fetch(after_id, limit)
            except sqlite3.Error as exc:
                self._failed(exc, "read")
                continue
            if len(rows) < limit and self._journal_rows:  # the file is read to its end:
                last = rows[-1].id if rows else after_id  # the journal's rows come next
                rows += [row for row in self._journal_rows.values()
                         if row.id > last and row.id not in self._bad][:limit - len(rows)]
            return rows
        if self._db is not None:
            self._degrade(sqlite3.OperationalError("repeated read failures"), "read")
        return self._memory.fetch(after_id, limit)  # type: ignore[union-attr]

    def _fetch(self, after_id: int, limit: int) -> list[Row]:
        db = self._db
        assert db is not None
        out: list[Row] = []
        bad: list[BadRow] = []
        gone = self._gone(after_id)
        cursor = after_id
        while len(out) < limit:
            want = limit - len(out)
            page = db.execute(PAGE, (cursor, want)).fetchall()
            for raw in page:
                row_id, device, seq, topic, stored, zipped, crc = raw
                if gone and row_id in gone:
                    continue
                try:  # the common case inline: a plain row whose checksum matches
                    if zipped == 0 and type(seq) is int and crc == crc32(stored, crc32(
                            b"%d\x00%s\x00%d\x00%s\x00%d\x00" % (row_id, device, seq, topic, 0))):
                        out.append(Row(row_id, device.decode(), seq, topic.decode(), stored))
                        continue
                except Exception:  # a field of the wrong type: decode says which
                    pass
                row = decode(*raw)
                if type(row) is Row:
                    out.append(row)
                else:
                    bad.append(row)  # type: ignore[arg-type]
            if len(page) < want:
                break
            cursor = page[-1][0]  # bad or gone rows took room in this page: read on
        if bad:
            self._quarantine_rows(bad)
        return out

    def _gone(self, after_id: int = 0) -> set[int] | None:
        """Ids acknowledged or quarantined but not yet deleted: never handed out again.
        None when there are none after `after_id` (the usual case: the publisher's cursor
        is past everything it has had acknowledged)."""
        if self._gone_max <= after_id:
            return None
        gone = set(self._acked).union(self._bad)
        if self._file_acks:
            gone.update(self._file_acks)
        return gone

    def ack(self, ids: list[int]) -> None:
        if self._memory is not None:
            self._memory.ack(ids)
            return
        self._acked.extend(ids)
        if ids:
            self._gone_max = max(self._gone_max, max(ids))
        self._depth -= len(ids)
        journaled = self._journal_rows
        if journaled:  # never to be written to SQLite; its record goes in the next flush
            for row_id in ids:
                row = journaled.pop(row_id, None)
                if row is not None:
                    self._bytes -= row_size(row.topic, row.payload)
        if not self._depth and self._sync_timer is not None and not self._file_acks:
            self._disarm_sync()  # delivered before the thread had to look: nothing owed

    def quarantine(self, row: Row, reason: str) -> None:
        """A row the publisher cannot use (e.g. it does not encode): set aside like a bad
        stored row, counted and logged, never retried."""
        self._quarantine_rows([BadRow(row.id, row.device, row.seq, reason)])

    def _quarantine_rows(self, bad: list[BadRow]) -> None:
        self.quarantined += len(bad)
        self._log("error", "buffer_rows_quarantined", path=str(self.path), rows=len(bad),
                  ranges=seq_ranges(bad), quarantined_total=self.quarantined)
        if self._memory is not None:
            self._memory.ack([row.id for row in bad])
            return
        for row in bad:
            if row.id not in self._bad:
                self._bad[row.id] = row.reason
                self._gone_max = max(self._gone_max, row.id)
                self._depth -= 1

    def depth(self) -> int:
        if self._memory is not None:
            return self._memory.depth()
        return self._depth + len(self._pending)

    def size_bytes(self) -> int:
        if self._memory is not None:
            return self._memory.size_bytes()
        return self._bytes + sum(row_size(t, p) for _, _, _, t, p in self._pending)

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and /readyz (taken on the event loop)."""
        self._check_file()
        checkpointer = self._checkpointer
        return {
            "depth": self.depth(), "bytes": self.size_bytes(), "dropped": self.dropped,
            "degraded": self.degraded, "quarantined": self.quarantined, "lost": self.lost,
            "seq_skipped": self.seqs.skipped, "recoveries": self.recoveries,
            "checkpoint_failures": self._checkpoint_failures
            + (checkpointer.failures if checkpointer else 0),
            "wal_bytes": checkpointer.wal_bytes if checkpointer else 0,
            "state_degraded": self.seqs.degraded,
            "last_recovery": None if self._last_recovery is None else {
                "seconds_ago": time.monotonic() - self._last_recovery[0],
                "problem": self._last_recovery[1]},
        }

    def close(self) -> None:
        if self._memory is not None:
            self._retry_at = 0.0  # a last try: what memory holds survives if the disk lets it
        self.flush()
        if self._memory is None and self._db is not None and (
                self._journal_written or self._journal_rows):
            self._commit()  # the journal's rows and seqs into SQLite: it is left empty
        self._disarm_sync()  # after the last commit, which may have armed it
        self._stop_checkpointer()
        if self._journal is not None:
            self._journal.close(remove=self._memory is None and not self._journal_written)
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                if self._boot is not None:
                    boot.clear_marker(self._db)  # synced by the checkpoint
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._close_db()
        self._log("info", "buffer_closed", path=str(self.path), kept=self.depth(),
                  dropped=self.dropped, quarantined=self.quarantined, lost=self.lost,
                  degraded=self.degraded)

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    # -- failure -------------------------------------------------------------------------
    def _failed(self, exc: sqlite3.Error, during: str) -> None:
        """A damaged file is rebuilt; a disk that will not write sends the buffer to memory."""
        if is_corrupt(exc):
            self._rebuild(f"the buffer file is damaged ({during}: {exc})", aside="corrupt")
        else:
            self._degrade(exc, during)

    def _check_file(self) -> None:
        """Acts on the file deleted or replaced: seen by the buffer thread, or here, once a
        SYNC_EVERY at most (the thread may be parked for longer)."""
        checkpointer = self._checkpointer
        if checkpointer is None:
            return
        problem = checkpointer.file_problem
        if problem is None:
            now = time.monotonic()
            if now < self._watch_at:
                return
            self._watch_at = now + SYNC_EVERY
            problem = checkpointer.watch()
            if problem is None:
                self._watch_journal()
                return
        self._rebuild(problem, aside="replaced")

    def _watch_journal(self) -> None:
        """A journal deleted or replaced while it holds records (a settled one may for
        minutes) goes into SQLite now: the seqs only it held are then safe from a kill, and
        the cut opens a new journal where a start will read it."""
        journal = self._journal
        if (journal is not None and journal.size and self._db is not None
                and journal.watch() is not None):
            self._commit()

    def _rebuild(self, problem: str, aside: str) -> None:
        """Copies every readable row, as stored, into a new file that takes the path.

        The open connection still reads a file that was deleted or replaced, so nothing
        committed is lost with it; rows still pending are written too. The new file is
        built beside the path and renamed into place once complete.
        """
        old = self._db
        assert old is not None
        self._stop_checkpointer()
        building = self.path.with_name(self.path.name + ".rebuild")
        kept_before = self.depth()
        try:
            remove_database(building)
            new = connect(building, wal=False)
            try:
                generation = new_generation(new)
                self.seqs.rebind(generation)
                copied = self._copy_rows(old, new)
                new.close()
            except BaseException:
                new.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(OSError):
                remove_database(building)
            self._degrade(exc, "rebuild")
            return
        self._close_db()
        moved_to = None
        try:
            if aside != "corrupt":  # the WAL beside the path is the lost file's, copied now:
                remove_wal(self.path)  # replayed into another file it would rewrite it
            if self.path.exists():  # another file, or the damaged one: keep it for people
                moved_to = str(self._move_aside(aside))
            os.replace(building, self.path)
            self._depth = self._bytes = 0
            self._connect()
        except (sqlite3.Error, OSError) as exc:  # the copy is complete: read it from there
            self._close_db()
            self._degrade(exc, "rebuild", open_read_only(
                building if building.exists() else self.path))
            return
        self._start_checkpointer()
        self._spilled()  # the new file in place holds the journal's rows: cut it
        self.recoveries += 1
        self._last_recovery = (time.monotonic(), problem)
        self._log("warning", "buffer_recovered", path=str(self.path), problem=problem,
                  kept=copied, not_copied=max(0, kept_before - copied), moved_to=moved_to)

    def _copy_rows(self, old: sqlite3.Connection, new: sqlite3.Connection) -> int:
        """Checked rows of `old` (as stored) and the pending rows into `new`, one commit."""
        copied = 0
        new.execute("BEGIN")
        batch = []
        for raw, _ in self._readable(old):
            row_id, device, seq, topic, stored, zipped, _crc = raw
            batch.append((row_id, device.decode(), seq, topic.decode(), stored, zipped,
                          checksum(row_id, device, seq, topic, stored, zipped)))
            if len(batch) >= SALVAGE_PAGE:
                new.executemany(INSERT, batch)
                copied += len(batch)
                batch = []
        new.executemany(INSERT, batch)
        copied += len(batch)
        journaled = list(self._journal_rows.values())
        new.executemany(INSERT, self._stored_rows(journaled, False))
        new.executemany(INSERT, self._stored_rows(self._pending))
        copied += len(journaled) + len(self._pending)
        new.executemany(UPSERT_SEQ, {**self._journal_seqs, **self.seqs.dirty}.items())
        new.execute(SET_JOURNAL_UPTO, (self._last_id,))  # the journal holds nothing more
        new.execute("COMMIT")
        self._pending.clear()
        self.seqs.dirty.clear()
        self._forget_journaled()
        self._acked = []
        self._bad = {}
        self._gone_max = 0
        self._forget_fresh()  # the new file's rows are read from it, checked
        return copied

    def _readable(self, db: sqlite3.Connection) -> Iterator[tuple[tuple[Any, ...], Row]]:
        """Every committed row that passes its check (raw, decoded), in id order.

        Page by page; a page SQLite cannot read is probed id by id, so damaged pages cost
        only their own rows (counted in `lost`). Acknowledged and quarantined rows are
        skipped; rows failing their check are quarantined (counted and logged).
        """
        gone = self._gone() or set()
        last_id = self._last_id
        cursor = 0
        while True:
            try:
                page = db.execute(PAGE, (cursor, SALVAGE_PAGE)).fetchall()
                end = page[-1][0] if page else None
            except sqlite3.Error:
                if cursor >= last_id:
                    return
                end = min(cursor + SALVAGE_PAGE, last_id)
                page = self._probe(db, cursor + 1, end)
            if end is None:
                return
            bad: list[BadRow] = []
            for raw in page:
                if raw[0] in gone:
                    continue
                row = decode(*raw)
                if type(row) is Row:
                    yield raw, row
                else:
                    bad.append(row)  # type: ignore[arg-type]
            if bad:
                self.quarantined += len(bad)
                self._log("error", "buffer_rows_quarantined", path=str(self.path),
                          rows=len(bad), ranges=seq_ranges(bad),
                          quarantined_total=self.quarantined)
            cursor = end

    def _probe(self, db: sqlite3.Connection, first: int, last: int) -> list[tuple[Any, ...]]:
        """Rows `first`..`last` one by one; those that cannot be read are counted lost."""
        rows, lost = [], 0
        for row_id in range(first, last + 1):
            try:
                rows.extend(db.execute(f"SELECT {COLUMNS} FROM messages WHERE id = ?",
                                       (row_id,)).fetchall())
            except sqlite3.Error:
                lost += 1
        if lost:
            self.lost += lost
            self._log("error", "buffer_rows_unreadable", path=str(self.path), rows=lost,
                      first_id=first, last_id=last)
        return rows

    def _degrade(self, exc: BaseException, during: str,
                 source: sqlite3.Connection | None = None) -> None:
        """Carries on in memory: the backlog that can still be read, plus the unsaved rows."""
        reason = getattr(exc, "strerror", None) or str(exc)
        self.degraded = f"buffer {self.path} not writable ({during}: {reason}); buffering in memory"
        self._log("error", "buffer_degraded", path=str(self.path), during=during, error=reason,
                  fallback="memory")
        self._stop_checkpointer()
        memory = MemoryOutbox(self.max_bytes, seqs=self.seqs, log=self.log)
        source = source if source is not None else self._db
        if source is not None:
            try:
                memory.restore(row for _, row in self._readable(source))
            except sqlite3.Error as read_exc:  # _readable probes; this is the last resort
                self._log("error", "buffer_backlog_unreadable", error=str(read_exc))
            if source is not self._db:
                with contextlib.suppress(sqlite3.Error):
                    source.close()
        self._close_db()
        memory.restore(self._journal_rows.values())  # left in the journal too, for a restart
        memory.restore(self._pending)
        memory.skip_to(self._last_id)
        self._forget_journaled()
        self._pending.clear()
        self._forget_fresh()
        self._acked = []
        self._bad = {}
        self._gone_max = 0
        self._memory = memory
        self._retry_at = time.monotonic() + self.retry_every

    def _back_to_disk(self) -> None:
        """Leaves memory for a new durable file once the disk takes writes again.

        The memory buffer holds every row still owed (the old file's readable backlog was
        moved into it, acknowledgements since were applied there), so the new file is built
        from it beside the path and renamed over whatever the path holds.
        """
        memory = self._memory
        assert memory is not None
        self._retry_at = time.monotonic() + self.retry_every
        building = self.path.with_name(self.path.name + ".rebuild")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_database(building)
            new = connect(building, wal=False)
            try:
                generation = new_generation(new)
                zipped = memory.depth() > COMPRESS_BACKLOG
                new.execute("BEGIN")
                cursor = 0
                while rows := memory.fetch(cursor, SALVAGE_PAGE):
                    new.executemany(INSERT, [encode(r.id, r.device, r.seq, r.topic, r.payload,
                                                     zipped) for r in rows])
                    cursor = rows[-1].id
                new.executemany(UPSERT_SEQ, self.seqs.current.items())
                new.execute(SET_JOURNAL_UPTO, (max(self._last_id, memory.skip_to(0)),))
                new.execute("COMMIT")
            finally:
                new.close()
            remove_wal(self.path)  # the old file's: every row it owed is in the new one
            os.replace(building, self.path)
            self._depth = self._bytes = 0
            self._connect()
        except (sqlite3.Error, OSError) as exc:
            self._close_db()
            with contextlib.suppress(OSError):
                remove_database(building)
            self._retries.failed(getattr(exc, "strerror", None) or str(exc))
            return
        self._retries.succeeded()
        self.seqs.rebind(generation)
        self._dropped += memory.dropped
        self._last_id = max(self._last_id, memory.skip_to(0))
        self._forget_fresh()
        self._memory = None
        self.degraded = None
        self._start_checkpointer()
        self._spilled()  # what the journal held is in the new file (or acknowledged)
        self._log("warning", "buffer_durable_again", path=str(self.path), kept=self._depth)

    def _move_aside(self, why: str) -> Path:
        """Renames the file at `path` (and its WAL and shared memory) out of the way."""
        aside = self.path.with_name(f"{self.path.name}.{why}-{int(time.time())}")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        os.replace(self.path, aside)
        return aside

    def _log(self, level: str, event: str, **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(event, **fields)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this thread runs, if any (the agent's; not a script's or bench/'s)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
