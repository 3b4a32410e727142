"""The in-memory outbox: bounded by `buffer.max_bytes` in real memory, not in counters.

A Python object per message costs far more than its payload (a bytes object made by
orjson can hold a 4 KiB allocation for a 200-byte payload; a row tuple and its ints add
~150 bytes), so a limit counted in payload bytes let the process grow to ~20x the limit.
Here messages are copied into fixed-size arenas: one `bytearray` per CHUNK of payloads,
with the ids, seqs and (device, topic) keys in typed arrays beside it, so a message costs
its payload plus ~25 bytes, which `row_size` (payload + topic + ROW_OVERHEAD) counts with
room to spare. An arena is freed as soon as its last message is acknowledged or dropped;
one that is mostly dead (acknowledged out of order) is compacted.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from typing import Any

from edge_agent.store.drops import DropEpisodes
from edge_agent.store.rows import ROW_OVERHEAD, Row
from edge_agent.store.seqs import SeqAllocator

#: bytes per arena: small enough that a partly used one is cheap, large enough to be few
CHUNK = 256 * 1024


class _Arena:
    """Messages in id order: payloads back to back in `data`, their fields in arrays."""

    __slots__ = ("alive", "data", "ends", "head", "ids", "keys", "live", "sealed", "seqs",
                 "used", "view")

    def __init__(self, capacity: int) -> None:
        self.data = bytearray(capacity)
        self.view = memoryview(self.data)  # slices without a copy; data is never resized
        self.reset()

    def reset(self) -> None:
        """Empty again, keeping the buffer (its pages are already mapped)."""
        self.used = 0
        self.ids = array("q")
        self.seqs = array("q")
        self.keys = array("I")  # index into MemoryOutbox._keys: (device, topic)
        self.ends = array("I")  # end offset of each payload in data
        self.alive = bytearray()  # 1 while the message waits, 0 once acknowledged or dropped
        self.live = 0
        self.sealed = False
        self.head = 0  # messages before this index are all gone (drops go oldest first)

    def payload(self, index: int) -> bytes:
        start = self.ends[index - 1] if index else 0
        return bytes(self.view[start:self.ends[index]])

    def length(self, index: int) -> int:
        return self.ends[index] - (self.ends[index - 1] if index else 0)


class MemoryOutbox:
    """Bounded in-memory outbox: survives broker outages, not agent restarts."""

    degraded: str | None = None

    def __init__(self, max_bytes: int, seqs: SeqAllocator | None = None,
                 log: Any = None) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        self.quarantined = 0
        self._log = log
        self.seqs = seqs if seqs is not None else SeqAllocator()
        self._arenas: list[_Arena] = []
        self._firsts: list[int] = []  # first id of each arena, for bisect
        self._keys: list[tuple[str, str]] = []
        self._key_index: dict[tuple[str, str], int] = {}
        self._spare: _Arena | None = None  # a freed arena, reused: no fresh pages per CHUNK
        self._bytes = 0
        self._depth = 0
        self._last_id = 0
        self._episodes = DropEpisodes(log, max_bytes)

    # -- the Outbox interface ------------------------------------------------------------
    def next_seq(self, device: str) -> int:
        return self.seqs.next(device)

    def append(self, device: str, seq: int, topic: str, payload: bytes) -> int:
        self._last_id += 1
        self._store(self._last_id, device, seq, topic, payload)
        if self._bytes > self.max_bytes:
            self._drop_oldest()
        return self._last_id

    def restore(self, rows: Iterable[Row]) -> None:
        """Takes over rows (with their ids, ascending) from a durable outbox that stopped
        working; rows at or below the last id held are already here or gone."""
        for row in rows:
            if row.id > self._last_id:
                self._last_id = row.id
                self._store(row.id, row.device, row.seq, row.topic, row.payload)
        if self._bytes > self.max_bytes:
            self._drop_oldest()

    def skip_to(self, last_id: int) -> int:
        """Ids up to `last_id` were handed out elsewhere: new messages come after them.
        Returns the last id handed out."""
        self._last_id = max(self._last_id, last_id)
        return self._last_id

    def flush(self) -> None:
        pass

    def fetch(self, after_id: int, limit: int) -> list[Row]:
        out: list[Row] = []
        keys = self._keys
        start = max(0, bisect.bisect_right(self._firsts, after_id) - 1)
        for arena in self._arenas[start:]:
            index = bisect.bisect_right(arena.ids, after_id)
            alive, ids = arena.alive, arena.ids
            for i in range(index, len(ids)):
                if alive[i]:
                    device, topic = keys[arena.keys[i]]
                    out.append(Row(ids[i], device, arena.seqs[i], topic, arena.payload(i)))
                    if len(out) >= limit:
                        return out
        return out

    def ack(self, ids: list[int]) -> None:
        for row_id in ids:
            self._remove(row_id)
        self._episodes.check(self._bytes)

    def quarantine(self, row: Row, reason: str) -> None:
        """A message the publisher could not use: it leaves, counted and logged."""
        self._remove(row.id)
        self.quarantined += 1
        if self._log is not None:
            self._log.error("buffer_rows_quarantined", rows=1, quarantined_total=self.quarantined,
                            ranges=[{"device": row.device, "first_seq": row.seq,
                                     "last_seq": row.seq, "rows": 1, "reason": reason}])

    def depth(self) -> int:
        return self._depth

    def size_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, Any]:
        return {"depth": self._depth, "bytes": self._bytes, "dropped": self.dropped,
                "degraded": None, "quarantined": self.quarantined, "lost": 0,
                "seq_skipped": self.seqs.skipped, "recoveries": 0, "checkpoint_failures": 0,
                "wal_bytes": 0, "state_degraded": self.seqs.degraded, "last_recovery": None}

    def close(self) -> None:
        pass

    # -- arenas --------------------------------------------------------------------------
    def _store(self, row_id: int, device: str, seq: int, topic: str, payload: bytes) -> None:
        key = self._key_index.get((device, topic))
        if key is None:
            key = self._key_index[(device, topic)] = len(self._keys)
            self._keys.append((device, topic))
        size = len(payload)
        arena = self._arenas[-1] if self._arenas else None
        if arena is None or arena.sealed or arena.used + size > len(arena.data):
            if arena is not None:
                arena.sealed = True
                self._release(len(self._arenas) - 1)
            arena = self._new_arena(size)
            self._arenas.append(arena)
            self._firsts.append(row_id)
        end = arena.used + size
        arena.data[arena.used:end] = payload
        arena.used = end
        arena.ids.append(row_id)
        arena.seqs.append(seq)
        arena.keys.append(key)
        arena.ends.append(end)
        arena.alive.append(1)
        arena.live += 1
        self._depth += 1
        self._bytes += size + len(topic) + ROW_OVERHEAD

    def _new_arena(self, size: int) -> _Arena:
        spare, self._spare = self._spare, None
        if spare is not None and len(spare.data) >= size:
            spare.reset()
            return spare
        return _Arena(max(CHUNK, size))

    def _locate(self, row_id: int) -> tuple[int, int] | None:
        a = bisect.bisect_right(self._firsts, row_id) - 1
        if a < 0:
            return None
        ids = self._arenas[a].ids
        i = bisect.bisect_left(ids, row_id)
        if i < len(ids) and ids[i] == row_id:
            return a, i
        return None

    def _remove(self, row_id: int) -> None:
        found = self._locate(row_id)
        if found is None:
            return
        a, i = found
        arena = self._arenas[a]
        if arena.alive[i]:
            self._kill(arena, i)
            self._release(a)

    def _kill(self, arena: _Arena, i: int) -> None:
        arena.alive[i] = 0
        arena.live -= 1
        self._depth -= 1
        self._bytes -= arena.length(i) + len(self._keys[arena.keys[i]][1]) + ROW_OVERHEAD

    def _release(self, a: int) -> None:
        """Frees a sealed arena with nothing left alive; compacts one that is mostly dead."""
        arena = self._arenas[a]
        if not arena.sealed:
            return
        if arena.live == 0:
            del self._arenas[a]
            del self._firsts[a]
            if len(arena.data) == CHUNK:
                self._spare = arena
        elif arena.live * 2 < len(arena.ids) and len(arena.ids) >= 64:
            self._arenas[a] = compacted = _compact(arena)
            self._firsts[a] = compacted.ids[0]

    def _drop_oldest(self) -> None:
        """Drops the oldest messages until within max_bytes; keeps the newest one."""
        count = 0
        while self._bytes > self.max_bytes and self._depth > 1:
            arena = self._arenas[0]
            i = arena.head
            while i < len(arena.ids) and self._bytes > self.max_bytes and self._depth > 1:
                if arena.alive[i]:
                    self._kill(arena, i)
                    count += 1
                i += 1
            arena.head = i
            if arena.live or not arena.sealed:
                break
            self._release(0)
        if count:
            self.dropped += count
            self._episodes.dropped(count, self._bytes)


def _compact(arena: _Arena) -> _Arena:
    """A copy of `arena` holding only its live messages, in a buffer of their size."""
    size = sum(arena.length(i) for i in range(len(arena.ids)) if arena.alive[i])
    out = _Arena(size)
    for i in range(len(arena.ids)):
        if arena.alive[i]:
            start = arena.ends[i - 1] if i else 0
            end = out.used + arena.ends[i] - start
            out.data[out.used:end] = arena.data[start:arena.ends[i]]
            out.used = end
            out.ids.append(arena.ids[i])
            out.seqs.append(arena.seqs[i])
            out.keys.append(arena.keys[i])
            out.ends.append(end)
            out.alive.append(1)
            out.live += 1
    out.sealed = True
    return out
