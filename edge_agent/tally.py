"""Counts what a driver dropped (bad checksums, unparsable lines, noise) and logs it sparingly.

Garbage on a serial line can arrive hundreds of times a second; logging each occurrence would
bury everything else. The count is exact; the log line is written on the 1st, 2nd, 4th, 8th...
occurrence of each kind, so a burst is visible without flooding.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class FaultTally(Counter[str]):
    """`counters[kind]` is the number of inputs dropped for that reason since start."""

    def __init__(self, log: Any, event: str) -> None:
        super().__init__()
        self._log, self._event = log, event

    def record(self, kind: str, detail: str = "", sample: bytes | str = b"") -> None:
        count = self[kind] + 1
        self[kind] = count
        if count & (count - 1) == 0:  # a power of two
            self._log.warning(self._event, kind=kind, count=count, detail=detail,
                              input=_excerpt(sample))


def _excerpt(data: bytes | str, limit: int = 80) -> str:
    text = data if isinstance(data, str) else data.decode("ascii", "backslashreplace")
    return text if len(text) <= limit else text[:limit] + "..."
