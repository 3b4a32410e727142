"""The outbox holds telemetry between normalisation and the broker's acknowledgement.

A message is appended (and, for a durable outbox, committed) before it is published, and
leaves only when the broker has acknowledged it. The publisher reads it in id order, so
delivery is in order per device. This module holds the interface and the in-memory outbox;
the durable SQLite one lives in `edge_agent.buffer`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from edge_agent.config import BufferConfig


class Row(NamedTuple):
    id: int
    device: str
    seq: int
    topic: str
    payload: bytes


class Outbox(Protocol):
    dropped: int

    def next_seq(self, device: str) -> int:
        """Allocates the device's next telemetry seq (persisted by durable outboxes)."""

    def append(self, device: str, seq: int, topic: str, payload: bytes) -> int: ...

    def flush(self) -> None:
        """Makes every appended message durable; called once per batch, not per message."""

    def fetch(self, after_id: int, limit: int) -> list[Row]: ...

    def ack(self, ids: list[int]) -> None: ...

    def depth(self) -> int: ...

    def size_bytes(self) -> int: ...

    def close(self) -> None: ...


class MemoryOutbox:
    """Bounded in-memory outbox: survives broker outages, not agent restarts."""

    def __init__(self, max_bytes: int, seqs: dict[str, int] | None = None) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        self._rows: OrderedDict[int, Row] = OrderedDict()
        self._bytes = 0
        self._last_id = 0
        self._seqs: dict[str, int] = dict(seqs or {})

    def next_seq(self, device: str) -> int:
        seq = self._seqs.get(device, 0) + 1
        self._seqs[device] = seq
        return seq

    def append(self, device: str, seq: int, topic: str, payload: bytes) -> int:
        self._last_id += 1
        self._rows[self._last_id] = Row(self._last_id, device, seq, topic, payload)
        self._bytes += len(payload)
        while self._bytes > self.max_bytes and len(self._rows) > 1:
            _, oldest = self._rows.popitem(last=False)
            self._bytes -= len(oldest.payload)
            self.dropped += 1
        return self._last_id

    def flush(self) -> None:
        pass

    def fetch(self, after_id: int, limit: int) -> list[Row]:
        out = []
        for row_id, row in self._rows.items():  # ids are ascending; stop at the window
            if row_id > after_id:
                out.append(row)
                if len(out) >= limit:
                    break
        return out

    def ack(self, ids: list[int]) -> None:
        for row_id in ids:
            row = self._rows.pop(row_id, None)
            if row is not None:
                self._bytes -= len(row.payload)

    def depth(self) -> int:
        return len(self._rows)

    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        pass


def open_outbox(config: BufferConfig, log: Any) -> Outbox:
    """The durable SQLite outbox at `buffer.path`, else (no path) an in-memory one."""
    if config.path is None:
        return MemoryOutbox(config.max_bytes)
    from edge_agent.buffer import SqliteOutbox

    return SqliteOutbox(config.path, config.max_bytes, log=log)
