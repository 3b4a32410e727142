"""The buffer's SQLite file: schema and migration, opening (also read-only), identity, and
the statements the outbox runs on it.

Text columns are read as bytes (`text_factory = bytes`): a field whose type a flipped bit
changed is the row checker's to judge (`edge_agent.store.rows`), never an exception that
fails a whole query.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import sqlite3
import time
from pathlib import Path

from edge_agent.store.rows import ROW_OVERHEAD

#: the WAL is cut back to this size whenever SQLite restarts it (`journal_size_limit`)
WAL_SIZE_LIMIT = 4 * 1024 * 1024

#: ids per DELETE statement (SQLite allows 32766 variables; keep statements small)
DELETE_CHUNK = 500
#: quarantined rows kept in the file for inspection (older ones are deleted)
QUARANTINE_KEEP = 100
#: the schema version this code writes (PRAGMA user_version)
SCHEMA_VERSION = 2
#: SQLite's primary result codes for a damaged file (not the disk's or the caller's fault)
CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    zipped INTEGER NOT NULL DEFAULT 0,
    crc INTEGER
);
CREATE TABLE IF NOT EXISTS seqs (device TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (id, device, seq, topic, payload, zipped, crc,
                                       reason, at);
"""
SIZE_SQL = f"length(payload) + length(topic) + {ROW_OVERHEAD}"
COLUMNS = "id, device, seq, topic, payload, zipped, crc"
INSERT = f"INSERT INTO messages ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
UPSERT_SEQ = ("INSERT INTO seqs VALUES (?, ?) ON CONFLICT(device) "
              "DO UPDATE SET seq = excluded.seq")
PAGE = f"SELECT {COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?"
#: a journal's row put in again after a crash between a transaction and the journal's cut
INSERT_OR_IGNORE = f"INSERT OR IGNORE INTO messages ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
#: a journal's seq, which may be older than the file's: seqs never go back
RAISE_SEQ = ("INSERT INTO seqs VALUES (?, ?) ON CONFLICT(device) "
             "DO UPDATE SET seq = max(seq, excluded.seq)")
#: the highest id the file accounts for: journal records up to it are never replayed
SET_JOURNAL_UPTO = "INSERT OR REPLACE INTO meta VALUES ('journal_upto', ?)"


def connect(path: Path, wal: bool = True) -> sqlite3.Connection:
    """A connection with the schema in place (migrated from older versions)."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.text_factory = bytes  # text is checked, not trusted: decoding happens in rows.decode
    try:
        # Debian's SQLite zeroes deleted content by default: a page that an acknowledged row
        # leaves empty is then written again, a page per deleted row. The rows are telemetry
        # the broker already has, never a secret: no need to zero them (docs/performance.md,
        # "What changed, measured": a WAL frame fewer per commit)
        db.execute("PRAGMA secure_delete=OFF")
        if wal:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != b"wal" and mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL journal mode (got {mode!r})")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer thread does it
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        if b"zipped" not in columns:  # a buffer written by 0.1.0 before compression
            db.execute("ALTER TABLE messages ADD COLUMN zipped INTEGER NOT NULL DEFAULT 0")
        if b"crc" not in columns:  # before checksums: old rows keep crc NULL (not checked)
            db.execute("ALTER TABLE messages ADD COLUMN crc INTEGER")
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


def read_header(db: sqlite3.Connection) -> tuple[dict[str, int], str | None]:
    """(each device's last seq, the file's generation); creates the generation if missing."""
    seqs: dict[str, int] = {}
    for device, seq in db.execute("SELECT device, seq FROM seqs"):
        if isinstance(device, bytes) and isinstance(seq, int):
            seqs[device.decode("utf-8", "replace")] = seq
    found = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    if found is not None:
        value = found[0]
        return seqs, value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        return seqs, new_generation(db)
    except sqlite3.Error:  # read-only: the file has no generation yet
        return seqs, None


def read_journal_upto(db: sqlite3.Connection) -> int:
    """The highest row id the file accounts for (0: none recorded, every record counts)."""
    found = db.execute("SELECT value FROM meta WHERE key = 'journal_upto'").fetchone()
    try:
        return int(found[0]) if found is not None else 0
    except (TypeError, ValueError):
        return 0


def new_generation(db: sqlite3.Connection) -> str:
    """A new identity for this file: seq state written with another one does not trust it."""
    generation = secrets.token_hex(8)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (generation,))
    return generation


def open_read_only(path: Path) -> sqlite3.Connection | None:
    """The file opened only to read its backlog (its folder may be read-only), or None."""
    if not path.exists():
        return None
    uri = path.resolve().as_uri()
    for options in ("?mode=ro", "?mode=ro&immutable=1"):
        try:
            db = sqlite3.connect(uri + options, uri=True, check_same_thread=False)
        except sqlite3.Error:
            continue
        db.text_factory = bytes
        try:  # the schema only: damaged pages of the table are the reader's to skip
            if db.execute("PRAGMA table_info(messages)").fetchall():
                return db
        except sqlite3.Error:
            pass
        db.close()
    return None


def remove_database(path: Path) -> None:
    remove_wal(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_wal(path: Path) -> None:
    for name in (f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def delete_rows(db: sqlite3.Connection, ids: list[int]) -> tuple[int, int]:
    """Deletes rows inside the caller's transaction: (rows, bytes) freed.

    The sizes are summed by a SELECT before a plain DELETE: `DELETE ... RETURNING` cost
    about 40 us more per commit of the standard workload's 3 KB rows, the SELECT about 12
    (docs/performance.md, "Durable buffer")."""
    removed, freed = 0, 0
    for start in range(0, len(ids), DELETE_CHUNK):
        chunk = ids[start:start + DELETE_CHUNK]
        count_sql, delete_sql = _delete_sql(len(chunk))
        count, size = db.execute(count_sql, chunk).fetchone()
        db.execute(delete_sql, chunk)
        removed += count
        freed += size if isinstance(size, int) else 0
    return removed, freed


@functools.lru_cache(maxsize=DELETE_CHUNK)
def _delete_sql(count: int) -> tuple[str, str]:
    """The SELECT of the sizes and the DELETE for `count` ids, built once per count (a
    flush usually deletes one or two: the statements are built on every commit otherwise)."""
    marks = ",".join("?" * count)
    return (f"SELECT count(*), sum({SIZE_SQL}) FROM messages WHERE id IN ({marks})",
            f"DELETE FROM messages WHERE id IN ({marks})")


def quarantine_rows(db: sqlite3.Connection, bad: dict[int, str]) -> tuple[int, int]:
    """Moves rows into the quarantine table (keeping the last QUARANTINE_KEEP)."""
    now = int(time.time())
    db.executemany(f"INSERT INTO quarantine SELECT {COLUMNS}, ?, ? FROM messages WHERE id = ?",
                   [(reason, now, row_id) for row_id, reason in bad.items()])
    db.execute("DELETE FROM quarantine WHERE rowid <= "
               "(SELECT max(rowid) FROM quarantine) - ?", (QUARANTINE_KEEP,))
    return delete_rows(db, list(bad))


def is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in CORRUPT_CODES
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError)
