"""What a driver hands to the core: raw values, read timestamps and quality.

These are deliberately cheap: a poll of 50 registers creates 50 small tuples, not 50 objects
with dictionaries, because the agent aims at a few microseconds of CPU per reading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

GOOD = "good"
BAD = "bad"
UNCERTAIN = "uncertain"
QUALITIES = (GOOD, BAD, UNCERTAIN)


class Reading(NamedTuple):
    """One raw value as read from a device, before scaling.

    `value` is None exactly when nothing could be decoded; the core then publishes it as bad.
    """

    metric: str
    value: Any
    quality: str = GOOD


@dataclass(slots=True)
class Sample:
    """Readings taken from one device at one instant (one poll, or one streamed record)."""

    ts_ms: int
    readings: list[Reading]


@dataclass(frozen=True, slots=True)
class PointSpec:
    """How the core normalises one metric; drivers describe their metrics with these."""

    name: str
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: report-by-exception (see edge_agent.normalize): absolute size, or percent of the last
    #: published value when `deadband_percent`; `heartbeat` in seconds
    deadband: float | None = None
    deadband_percent: bool = False
    heartbeat: float | None = None
    #: the raw value's type name (edge_agent.decode.TYPE_NAMES), where known: checks writes
    value_type: str | None = None


def now_ms() -> int:
    """Wall-clock epoch milliseconds: the read timestamp published as `ts`."""
    return time.time_ns() // 1_000_000
