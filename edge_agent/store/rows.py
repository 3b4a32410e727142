"""What a buffered message is, what it costs, and how a stored one is checked on the way out.

A row read back from disk is untrusted: SQLite detects neither a bit flip inside a record
nor one in a record header (a BLOB that turns into TEXT, an integer that turns into a
float). So every row is stored with a CRC32 over everything that is published from it
(id, device, seq, topic, the stored form of the payload and whether it is compressed),
and `decode` turns a stored row into a `Row` or into a `BadRow` naming what is wrong.
It never raises: one damaged row is set aside, never the backlog, and never the pump.
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

#: bytes counted per message beyond topic and payload (SQLite: record header, rowid, page
#: slack; memory: the row's index entries). The one definition of `buffer.max_bytes`.
ROW_OVERHEAD = 40
#: what `decode` shows of a damaged text field in logs
SHOWN = 64


class Row(NamedTuple):
    id: int
    device: str
    seq: int
    topic: str
    payload: bytes


class BadRow(NamedTuple):
    """A stored row that failed its check: never published, quarantined and counted."""

    id: int
    device: str  # as far as it can be read, for the log
    seq: Any
    reason: str


def row_size(topic: str, payload: bytes) -> int:
    """What a message counts against `buffer.max_bytes`, in either store."""
    return len(topic) + len(payload) + ROW_OVERHEAD


def checksum(row_id: int, device: bytes, seq: int, topic: bytes, stored: bytes,
             zipped: int) -> int:
    """CRC32 over the row as stored (compressed or not): what `decode` verifies."""
    head = b"%d\x00%s\x00%d\x00%s\x00%d\x00" % (row_id, device, seq, topic, zipped)
    return zlib.crc32(stored, zlib.crc32(head))


def encode(row_id: int, device: str, seq: int, topic: str, payload: bytes,
           zipped: bool) -> tuple[int, str, int, str, bytes, int, int]:
    """The values of one `messages` row: payload compressed if `zipped`, with its CRC."""
    stored = zlib.compress(payload, 1) if zipped else payload
    flag = 1 if zipped else 0
    crc = checksum(row_id, device.encode(), seq, topic.encode(), stored, flag)
    return row_id, device, seq, topic, stored, flag, crc


def decode(row_id: Any, device: Any, seq: Any, topic: Any, stored: Any, zipped: Any,
           crc: Any) -> Row | BadRow:
    """A stored row (read with text_factory=bytes) as a `Row`, or why it cannot be one.

    `crc` is None for rows written before checksums existed: those get every check but
    the checksum (a migrated buffer loses nothing).
    """
    try:
        if not isinstance(row_id, int):
            return BadRow(-1, _shown(device), seq, f"id is {type(row_id).__name__}")
        if not (isinstance(device, bytes) and isinstance(topic, bytes)
                and isinstance(stored, bytes)):
            return BadRow(row_id, _shown(device), seq, "a text field has the wrong type")
        if not isinstance(seq, int) or isinstance(seq, bool) or zipped not in (0, 1):
            return BadRow(row_id, _shown(device), seq, "seq or zipped has the wrong type")
        if crc is not None and crc != checksum(row_id, device, seq, topic, stored, zipped):
            return BadRow(row_id, _shown(device), seq, "checksum mismatch")
        payload = zlib.decompress(stored) if zipped else stored
        return Row(row_id, device.decode(), seq, topic.decode(), payload)
    except Exception as exc:  # anything at all: this row is bad, the others are not
        return BadRow(row_id if isinstance(row_id, int) else -1, _shown(device), seq,
                      f"{type(exc).__name__}: {exc}")


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        return value[:SHOWN].decode("utf-8", "replace")
    return repr(value)[:SHOWN]


def seq_ranges(bad: list[BadRow]) -> list[dict[str, Any]]:
    """Bad rows grouped per device into seq ranges, for one log line per batch."""
    out: list[dict[str, Any]] = []
    for row in bad:
        last = out[-1] if out else None
        if (last is not None and last["device"] == row.device and isinstance(row.seq, int)
                and isinstance(last["last_seq"], int) and row.seq == last["last_seq"] + 1):
            last["last_seq"] = row.seq
            last["rows"] += 1
        else:
            seq = row.seq if isinstance(row.seq, int) else repr(row.seq)[:SHOWN]
            out.append({"device": row.device, "first_seq": seq, "last_seq": seq, "rows": 1,
                        "reason": row.reason})
    return out
