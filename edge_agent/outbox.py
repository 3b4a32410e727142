"""The outbox holds telemetry between normalisation and the broker's acknowledgement.

A message is appended (and, for a durable outbox, committed) before it is published, and
leaves only when the broker has acknowledged it. The publisher reads it in id order, so
delivery is in order per device. This module holds the interface and picks the outbox;
the durable SQLite one is `edge_agent.buffer`, the in-memory one and the parts both are
built from live in `edge_agent.store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.buffer import SqliteOutbox
from edge_agent.store.memory import MemoryOutbox
from edge_agent.store.rows import Row

if TYPE_CHECKING:
    from edge_agent.config import BufferConfig

__all__ = ["MemoryOutbox", "Outbox", "Row", "SqliteOutbox", "open_outbox"]


class Outbox(Protocol):
    @property
    def dropped(self) -> int:
        """Messages dropped (oldest first) because max_bytes was reached, since start."""

    @property
    def degraded(self) -> str | None:
        """Why the outbox is not durable although it should be (None when healthy)."""

    def next_seq(self, device: str) -> int:
        """Allocates the device's next telemetry seq (persisted by durable outboxes)."""

    def append(self, device: str, seq: int, topic: str, payload: bytes) -> int: ...

    def flush(self) -> None:
        """Makes every appended message durable; called once per batch, not per message."""

    def fetch(self, after_id: int, limit: int) -> list[Row]:
        """Checked messages after `after_id`, in id order. Never raises for what a stored
        message holds: a damaged one is quarantined and counted, never returned."""

    def ack(self, ids: list[int]) -> None: ...

    def quarantine(self, row: Row, reason: str) -> None:
        """Sets aside a message the publisher cannot use (counted, logged, not retried)."""

    def depth(self) -> int: ...

    def size_bytes(self) -> int: ...

    def stats(self) -> dict[str, Any]:
        """depth, bytes, dropped, degraded, quarantined, lost, seq_skipped, recoveries,
        checkpoint_failures, wal_bytes, state_degraded: for /metrics and /readyz."""

    def close(self) -> None: ...


def open_outbox(config: BufferConfig, log: Any) -> Outbox:
    """The durable SQLite outbox at `buffer.path`, else (no path) an in-memory one."""
    if config.path is None:
        return MemoryOutbox(config.max_bytes, log=log)
    return SqliteOutbox(config.path, config.max_bytes, log=log, journal=config.journal)
