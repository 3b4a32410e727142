"""The outbox's journal: an append-only file in front of the SQLite buffer.

Why: a SQLite commit cost the standard workload 150-230 us a flush, an append to a plain
file 19-29 us (docs/performance.md, "The journal in front of SQLite"). So while the outbox
is in its live window (the broker keeping up, no backlog), a flush appends one record to
this file (the new rows, the acknowledgements, the seqs they used) and the rows are
published from memory as before: on disk (the page cache) before they are published, as
with SQLite's `synchronous=NORMAL`. Rows still unacknowledged a SYNC_EVERY later, or once
anything needs SQLite (a backlog, more than 64 acknowledgements of rows in the file, a
quarantine, the journal's size), go into SQLite in one transaction that also records the
highest id it accounts for (`journal_upto` in the `meta` table); the journal is then cut
to nothing. A journal that owes nothing (every row in it acknowledged: the idle agent's,
whose PUBACK comes milliseconds after the poll) is not put into SQLite on that clock: it
grows to SETTLED_JOURNAL_BYTES first, or until it owes something a SYNC_EVERY (the seqs it
holds are safe meanwhile: a kill leaves the file, a power cut is caught at start and the
seqs resume after their reservation). The outbox checks once a SYNC_EVERY that the file is
still there, and commits at once if not.

Recovery rests on that one rule: on start, a journal record's rows with an id above the
file's `journal_upto` and not acknowledged in a later record are put into SQLite (INSERT
OR IGNORE: the same id is the same row), and its seqs are raised (never lowered) to what
the records carry. A crash between a transaction and the cut therefore replays nothing
twice, and a journal that could not be cut holds nothing the rule takes again.

Each record is framed as `<length:u32><crc32:u32><body>`. A record cut short at the end
of the file is the torn tail of a write the process or the machine did not finish: it is
cut, with a warning. A record that is whole but fails its CRC (or declares an impossible
length) is damage: everything from it on is unreadable, the file is moved aside for
people (`<journal>.corrupt-<time>`) and the damage is logged as an error.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zlib import crc32

from edge_agent.store.rows import Row

#: record frame: body length, CRC32 of the body
_FRAME = struct.Struct("<II")
#: body head: rows, acknowledged ids, seqs
_COUNTS = struct.Struct("<III")
#: one row's head: id, seq, device, topic and payload lengths
_ROW = struct.Struct("<QQHHI")
_ACK = struct.Struct("<Q")
#: one seq: its value, the device name's length
_SEQ = struct.Struct("<QH")
#: the outbox writes no more than this to a journal before its rows go into SQLite (and
#: writes a larger flush to SQLite): a start reads the journal whole, so a bigger file is
#: not one of ours (read as damage, never loaded into memory)
MAX_BYTES = 4 * 1024 * 1024


def journal_path(buffer_path: Path) -> Path:
    """`<buffer>.journal`, beside the buffer (not SQLite's own `<buffer>-journal`)."""
    return buffer_path.with_name(buffer_path.name + ".journal")


def encode_record(rows: Iterable[Row], acked: Iterable[int],
                  seqs: dict[str, int]) -> bytes:
    """One flush as one record: written with one `write`, read back whole or not at all."""
    parts: list[bytes] = []
    count = 0
    for row_id, device, seq, topic, payload in rows:
        d, t = device.encode(), topic.encode()
        parts += (_ROW.pack(row_id, seq, len(d), len(t), len(payload)), d, t, payload)
        count += 1
    acks = list(acked)
    parts += [_ACK.pack(row_id) for row_id in acks]
    for device, seq in seqs.items():
        d = device.encode()
        parts += (_SEQ.pack(seq, len(d)), d)
    body = _COUNTS.pack(count, len(acks), len(seqs)) + b"".join(parts)
    return _FRAME.pack(len(body), crc32(body)) + body


@dataclass
class Replay:
    """What a journal file holds, read back in order."""

    rows: dict[int, Row] = field(default_factory=dict)  # acknowledged ones removed
    #: acknowledged rows that were in the buffer file, not in the journal: to delete
    file_acks: set[int] = field(default_factory=set)
    seqs: dict[str, int] = field(default_factory=dict)  # the highest seen per device
    last_id: int = 0  # the highest row id ever journaled (acknowledged or not)
    records: int = 0
    torn_bytes: int = 0  # an unfinished last record, cut
    damaged_bytes: int = 0  # from a record that failed its check to the end
    damage: str | None = None

    def keep_after(self, upto: int) -> list[Row]:
        """The rows the buffer file does not account for yet, in id order."""
        return [row for row_id, row in sorted(self.rows.items()) if row_id > upto]


def read(path: Path) -> Replay:
    """Parses the journal at `path` (missing: empty). Never raises for what it holds."""
    replay = Replay()
    try:
        with open(path, "rb") as f:
            data = f.read(2 * MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return replay
    except OSError as exc:
        replay.damage = f"it cannot be read ({exc.strerror or exc})"
        return replay
    if len(data) > 2 * MAX_BYTES:
        replay.damage = f"it is larger than any journal the agent writes ({2 * MAX_BYTES} bytes)"
        return replay
    offset, size = 0, len(data)
    while offset < size:
        if size - offset < _FRAME.size:
            replay.torn_bytes = size - offset
            break
        length, crc = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        if length < _COUNTS.size or length > MAX_BYTES:
            if data.count(0, offset) == size - offset:  # blocks a power cut left unwritten
                replay.torn_bytes = size - offset
                break
            replay.damage = f"a record at byte {offset} declares {length} bytes"
            replay.damaged_bytes = size - offset
            break
        if start + length > size:
            replay.torn_bytes = size - offset
            break
        body = data[start:start + length]
        if crc32(body) != crc:
            replay.damage = f"the record at byte {offset} fails its CRC"
            replay.damaged_bytes = size - offset
            break
        try:
            _apply(body, replay)
        except (struct.error, UnicodeDecodeError, ValueError) as exc:  # a CRC collision
            replay.damage = f"the record at byte {offset} does not parse ({exc})"
            replay.damaged_bytes = size - offset
            break
        replay.records += 1
        offset = start + length
    return replay


def _apply(body: bytes, replay: Replay) -> None:
    rows, acks, seqs = _COUNTS.unpack_from(body, 0)
    at = _COUNTS.size
    found: list[Row] = []
    for _ in range(rows):
        row_id, seq, dlen, tlen, plen = _ROW.unpack_from(body, at)
        at += _ROW.size
        device = body[at:at + dlen].decode()
        topic = body[at + dlen:at + dlen + tlen].decode()
        payload = body[at + dlen + tlen:at + dlen + tlen + plen]
        at += dlen + tlen + plen
        if len(payload) != plen:
            raise ValueError("a row runs past the record")
        found.append(Row(row_id, device, seq, topic, payload))
    acked = []
    for _ in range(acks):
        acked.append(_ACK.unpack_from(body, at)[0])
        at += _ACK.size
    seen: dict[str, int] = {}
    for _ in range(seqs):
        seq, dlen = _SEQ.unpack_from(body, at)
        at += _SEQ.size
        seen[body[at:at + dlen].decode()] = seq
        at += dlen
    if at != len(body):
        raise ValueError("trailing bytes")
    for row in found:  # only a whole record changes the replay
        replay.rows[row.id] = row
        replay.last_id = max(replay.last_id, row.id)
    for row_id in acked:
        if replay.rows.pop(row_id, None) is None:
            replay.file_acks.add(row_id)
    for device, seq in seen.items():
        replay.seqs[device] = max(seq, replay.seqs.get(device, 0))


class Journal:
    """The open journal file: appends records, is cut to nothing, is watched.

    Any failure to append or cut leaves it `broken` (the outbox then commits to SQLite
    only) until a later `cut` succeeds: a record after a torn one would never be read.
    """

    def __init__(self, path: Path, log: Any = None) -> None:
        self.path = path
        self.log = log
        self.size = 0  # bytes appended since the last cut
        self.broken: str | None = None
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def open_empty(self) -> bool:
        """A new, empty journal at `path` (what was there has been replayed or set aside)."""
        self.close()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                         | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            self._broke("open", exc)
            return False
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        self.size, self.broken = 0, None
        return True

    @property
    def usable(self) -> bool:
        return self._fd is not None and self.broken is None

    def append(self, record: bytes) -> bool:
        """One record in one write; False (and the journal cut back or broken) on failure."""
        fd = self._fd
        if fd is None or self.broken is not None:
            return False
        try:
            written = os.write(fd, record)
        except OSError as exc:
            self._undo(exc)
            return False
        if written != len(record):  # a full disk can take part of a write
            self._undo(OSError(f"short write: {written} of {len(record)} bytes"))
            return False
        self.size += written
        return True

    def _undo(self, exc: OSError) -> None:
        """Cuts a partial record back off; a journal that cannot be cut is broken."""
        reason = getattr(exc, "strerror", None) or str(exc)
        try:
            os.ftruncate(self._fd, self.size)  # type: ignore[arg-type]
        except OSError as cut_exc:
            self._broke("append", cut_exc)
            return
        self._log("warning", "buffer_journal_write_failed", path=str(self.path),
                  error=reason, fallback="sqlite")

    def cut(self) -> None:
        """After a transaction that accounts for every record: the file back to nothing.

        Also the file's watch: a journal deleted or replaced by something else is moved
        aside (if there) and a new one is opened, so no later record goes where a start
        would not read it.
        """
        if self._fd is None:
            self.open_empty()
            return
        problem = self.watch()
        if problem is not None:
            self._log("warning", "buffer_journal_replaced", path=str(self.path),
                      problem=problem)
            if problem != "deleted":
                move_aside(self.path, "replaced")
            self.open_empty()
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError as exc:
            self._broke("cut", exc)
            return
        self.size = 0
        if self.broken is not None:
            self._log("warning", "buffer_journal_usable_again", path=str(self.path))
            self.broken = None

    def watch(self) -> str | None:
        """Why the path no longer holds the open journal (deleted, replaced), or None."""
        try:
            stat = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return "deleted"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return "replaced by another file"
        return None

    def _broke(self, during: str, exc: OSError) -> None:
        reason = getattr(exc, "strerror", None) or str(exc)
        if self.broken is None:
            self._log("error", "buffer_journal_unusable", path=str(self.path), during=during,
                      error=reason, fallback="sqlite")
        self.broken = f"{during}: {reason}"

    def close(self, remove: bool = False) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            if remove and self.broken is None and self.watch() is None:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    def _log(self, level: str, event: str, **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(event, **fields)


def move_aside(path: Path, why: str) -> Path | None:
    """A journal kept for people (damaged, or another file): renamed beside the buffer."""
    aside = path.with_name(f"{path.name}.{why}-{int(time.time())}")
    try:
        os.replace(path, aside)
    except OSError:
        return None
    return aside
