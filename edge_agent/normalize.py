"""Turns a driver's raw sample into published readings: scale, offset, unit, quality, ts.

Runs for every reading, so the per-metric work is precomputed once per device: a plain dict
lookup and, for scaled numbers, one multiply-add (or a divide, see `_Scaling`). Points with a
`deadband` or `heartbeat` also pass a report-by-exception filter (`_ReportByException`);
points without one cost a single attribute test more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from edge_agent.model import BAD, GOOD, PointSpec, Reading, Sample


class _Scaling:
    """value = raw * scale + offset, computed so that 215 * 0.1 gives 21.5, not 21.500000000000004.

    A scale that is the reciprocal of a whole number is applied as a division by that number,
    which is exact for decimal fractions, where the multiplication is not.
    """

    __slots__ = ("divisor", "identity", "offset", "report", "scale", "unit")

    def __init__(self, spec: PointSpec) -> None:
        self.scale, self.offset, self.unit = spec.scale, spec.offset, spec.unit
        self.report = _ReportByException(spec) if (
            spec.deadband is not None or spec.heartbeat is not None) else None
        self.identity = spec.scale == 1 and spec.offset == 0
        self.divisor = None
        if 0 < abs(spec.scale) < 1:
            inverse = 1 / spec.scale
            if abs(inverse - round(inverse)) < 1e-9:
                self.divisor = round(inverse)

    def apply(self, raw: Any) -> Any:
        if self.identity or isinstance(raw, bool) or not isinstance(raw, int | float):
            return raw
        value = raw / self.divisor if self.divisor else raw * self.scale
        return value + self.offset if self.offset else value

    def invert(self, value: float) -> float:
        """The raw value that scales to `value`: used by downlink writes."""
        shifted = value - self.offset
        return shifted * self.divisor if self.divisor else shifted / self.scale


Scaling = _Scaling  # public name for other modules (downlink writes invert it)

_NEVER = object()


class _ReportByException:
    """Decides whether a point's new value is worth publishing.

    Publishes the first value, any change of quality, a change beyond the deadband from the
    last *published* value (so a slow drift still gets through once it adds up), any change
    of a non-numeric value, and, with a heartbeat, the value once `heartbeat` seconds of read
    time have passed since the last publish even when nothing changed. The heartbeat is
    judged when a reading arrives, so its resolution is the device's poll interval.
    """

    __slots__ = ("band", "heartbeat_ms", "last_ts", "percent", "quality", "value")

    def __init__(self, spec: PointSpec) -> None:
        self.band = float(spec.deadband or 0.0)
        self.percent = spec.deadband_percent
        self.heartbeat_ms = round(spec.heartbeat * 1000) if spec.heartbeat else None
        self.reset()

    def reset(self) -> None:
        self.value: Any = _NEVER
        self.quality: str | None = None
        self.last_ts = 0

    def keep(self, value: Any, quality: str, ts: int) -> bool:
        last = self.value
        due = (last is _NEVER or quality != self.quality
               or (self.heartbeat_ms is not None and ts - self.last_ts >= self.heartbeat_ms))
        if not due:
            if value.__class__ in _NUMBERS and last.__class__ in _NUMBERS:
                if abs(value - last) <= (abs(last) * self.band / 100 if self.percent
                                         else self.band):
                    return False
            elif value == last and value.__class__ is last.__class__:
                return False
        self.value, self.quality, self.last_ts = value, quality, ts
        return True


_NUMBERS = (int, float)
_UNSCALED = _Scaling(PointSpec("_"))


def _scaling(spec: PointSpec) -> _Scaling:
    """The point's scaling: its own when it reports by exception (that keeps state), else
    one shared by every point with the same scale, offset and unit (memory: 247 devices x
    47 points held 1.3 MiB of equal ones)."""
    if spec.deadband is not None or spec.heartbeat is not None:
        return _Scaling(spec)
    key = (spec.scale.__class__, spec.scale, spec.offset.__class__, spec.offset, spec.unit)
    shared = _SHARED.get(key)
    if shared is None:
        if len(_SHARED) >= MAX_SHARED:  # ever new scalings (reloads): start over
            _SHARED.clear()
        shared = _SHARED[key] = _Scaling(PointSpec("_", spec.unit, spec.scale, spec.offset))
    return shared


#: stateless scalings shared between points, by (scale, offset, unit) with their types
_SHARED: dict[tuple[Any, ...], _Scaling] = {}
MAX_SHARED = 1024


class Normalizer:
    """Per-device: knows each metric's scaling, unit and report-by-exception state."""

    def __init__(self, points: list[PointSpec]) -> None:
        self._scalings = {p.name: _scaling(p) for p in points}
        self.suppressed = 0  # readings held back by report-by-exception (a metric)
        #: readings are published in the order of `points` (the configured order): a
        #: driver reads in whatever order suits the device (Modbus: by table and address)
        self._rank = {p.name: i for i, p in enumerate(points)}
        #: the permutation for each sequence of metrics seen (None: already in order). A
        #: poll repeats the same sequence, so ordering costs one tuple and one dict lookup.
        self._orders: dict[tuple[str, ...], Callable[[list[Reading]], Any] | None] = {}

    def scaling(self, metric: str) -> _Scaling:
        return self._scalings.get(metric, _UNSCALED)

    def reset(self) -> None:
        """Forgets what was published, so every point reports again (after a reconnect)."""
        for scaling in self._scalings.values():
            if scaling.report is not None:
                scaling.report.reset()

    def readings(self, sample: Sample) -> list[dict[str, Any]]:
        # The body of _Scaling.apply is inlined: this loop runs for every reading published.
        ts = sample.ts_ms
        get = self._scalings.get
        isfinite = math.isfinite
        out = []
        readings = sample.readings
        if len(readings) > 1:
            key = tuple(map(_METRIC, readings))
            try:
                reorder = self._orders[key]
            except KeyError:
                reorder = self._order_for(key)
            if reorder is not None:
                readings = reorder(readings)
        for metric, raw, quality in readings:
            scaling = get(metric, _UNSCALED)
            if raw is None:
                value, quality = None, BAD
            else:
                cls = raw.__class__
                if scaling.identity or not (cls is int or cls is float or (
                        cls is not bool and isinstance(raw, int | float))):
                    value = raw
                else:
                    value = raw / scaling.divisor if scaling.divisor else raw * scaling.scale
                    if scaling.offset:
                        value += scaling.offset
                if value.__class__ is float and not isfinite(value):
                    value, quality = None, BAD
            report = scaling.report
            if report is not None and not report.keep(value, quality, ts):
                self.suppressed += 1
                continue
            reading = {"metric": metric, "value": value, "ts": ts, "quality": quality}
            if scaling.unit is not None:
                reading["unit"] = scaling.unit
            out.append(reading)
        return out

    def _order_for(self, key: tuple[str, ...]) -> Callable[[list[Reading]], Any] | None:
        """The permutation that puts readings with these metrics in the configured order
        (metrics the points do not name keep their place after the others)."""
        rank, last = self._rank, len(self._rank)
        order = sorted(range(len(key)), key=lambda i: (rank.get(key[i], last), i))
        reorder = None if order == list(range(len(key))) else itemgetter(*order)
        if len(self._orders) >= MAX_ORDERS:  # a stream with ever new subsets: start over
            self._orders.clear()
        self._orders[key] = reorder
        return reorder


#: sequences of metrics remembered per device (a poll has one; a stream a few per sentence)
MAX_ORDERS = 256
_METRIC = itemgetter(0)


__all__ = ["GOOD", "Normalizer", "Scaling"]
