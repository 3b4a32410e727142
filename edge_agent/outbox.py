"""The outbox holds telemetry between normalisation and the broker's acknowledgement.

A message is appended (and, for a durable outbox, committed) before it is published, and
leaves only when the broker has acknowledged it. The publisher reads it in id order, so
delivery is in order per device. This module holds the interface and the in-memory outbox;
the durable SQLite one lives in `edge_agent.buffer`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from edge_agent.config import BufferConfig

#: a drop episode ends once the buffer is back below this share of max_bytes
DROP_EPISODE_END = 0.9


class Row(NamedTuple):
    id: int
    device: str
    seq: int
    topic: str
    payload: bytes


class Outbox(Protocol):
    #: messages dropped (oldest first) because max_bytes was reached, since start
    dropped: int
    #: why the outbox is not durable although it should be (None when healthy); /readyz
    degraded: str | None

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


class DropEpisodes:
    """Logs buffer overflow once per episode instead of once per dropped message.

    An episode starts with the first drop and ends when acknowledgements have brought the
    buffer back under 90 % of its limit; the end line carries the episode's count.
    """

    def __init__(self, log: Any, max_bytes: int) -> None:
        self.log, self.max_bytes = log, max_bytes
        self.in_episode = 0
        self.active = False

    def dropped(self, count: int, size: int) -> None:
        if not self.active:
            self.active = True
            if self.log is not None:
                self.log.warning("buffer_full_dropping_oldest", max_bytes=self.max_bytes,
                                 size_bytes=size)
        self.in_episode += count

    def check(self, size: int) -> None:
        if self.active and size < self.max_bytes * DROP_EPISODE_END:
            if self.log is not None:
                self.log.warning("buffer_drops_ended", dropped=self.in_episode, size_bytes=size)
            self.active, self.in_episode = False, 0


class MemoryOutbox:
    """Bounded in-memory outbox: survives broker outages, not agent restarts."""

    degraded: str | None = None

    def __init__(self, max_bytes: int, seqs: dict[str, int] | None = None,
                 log: Any = None) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        self._rows: OrderedDict[int, Row] = OrderedDict()
        self._bytes = 0
        self._last_id = 0
        self._seqs: dict[str, int] = dict(seqs or {})
        self._episodes = DropEpisodes(log, max_bytes)

    def next_seq(self, device: str) -> int:
        seq = self._seqs.get(device, 0) + 1
        self._seqs[device] = seq
        return seq

    def append(self, device: str, seq: int, topic: str, payload: bytes) -> int:
        self._last_id += 1
        self._rows[self._last_id] = Row(self._last_id, device, seq, topic, payload)
        self._bytes += len(payload)
        if self._bytes > self.max_bytes:
            self._drop_oldest()
        return self._last_id

    def restore(self, rows: Iterable[Row]) -> None:
        """Takes over rows (with their ids) from a durable outbox that stopped working."""
        for row in rows:
            self._rows[row.id] = row
            self._bytes += len(row.payload)
            self._last_id = max(self._last_id, row.id)
        if self._bytes > self.max_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        count = 0
        while self._bytes > self.max_bytes and len(self._rows) > 1:
            _, oldest = self._rows.popitem(last=False)
            self._bytes -= len(oldest.payload)
            count += 1
        self.dropped += count
        self._episodes.dropped(count, self._bytes)

    def flush(self) -> None:
        pass

    def fetch(self, after_id: int, limit: int) -> list[Row]:
        # Everything at or below the publisher's cursor is in flight or gone, so the rows
        # skipped here are at most one in-flight window.
        out = []
        for row_id, row in self._rows.items():
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
        self._episodes.check(self._bytes)

    def depth(self) -> int:
        return len(self._rows)

    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        pass


def open_outbox(config: BufferConfig, log: Any) -> Outbox:
    """The durable SQLite outbox at `buffer.path`, else (no path) an in-memory one."""
    if config.path is None:
        return MemoryOutbox(config.max_bytes, log=log)
    from edge_agent.buffer import SqliteOutbox

    return SqliteOutbox(config.path, config.max_bytes, log=log)
