"""Turns a driver's raw sample into published readings: scale, offset, unit, quality, ts.

Runs for every reading, so the per-metric work is precomputed once per device: a plain dict
lookup and, for scaled numbers, one multiply-add (or a divide, see `_Scaling`). Points with a
`deadband` or `heartbeat` also pass a report-by-exception filter (`_ReportByException`);
points without one cost a single attribute test more.
"""

from __future__ import annotations

import functools
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
    return _shared_scaling(spec.scale, spec.offset, spec.unit)


@functools.lru_cache(maxsize=1024, typed=True)  # typed: a scale of 1 is not one of 1.0
def _shared_scaling(scale: float, offset: float, unit: str | None) -> _Scaling:
    """A stateless scaling shared between points (ever new ones on reloads age out)."""
    return _Scaling(PointSpec("_", unit, scale, offset))


class _Plan:
    """What a poll's sequence of metrics needs, worked out once per sequence.

    `reorder` puts the readings in the configured order (None: already in it); `scalings`
    are the metrics' scalings in that order; `plain` says that none of them scales, has a
    unit or reports by exception, so each reading is published as read (the common case:
    raw registers of a PLC), and the readings are made by one comprehension.
    """

    __slots__ = ("plain", "reorder", "scalings")

    def __init__(self, reorder: Callable[[list[Reading]], Any] | None,
                 scalings: list[_Scaling]) -> None:
        self.reorder, self.scalings = reorder, scalings
        self.plain = all(s.identity and s.unit is None and s.report is None for s in scalings)


class Normalizer:
    """Per-device: knows each metric's scaling, unit and report-by-exception state."""

    def __init__(self, points: list[PointSpec]) -> None:
        self._scalings = {p.name: _scaling(p) for p in points}
        self.suppressed = 0  # readings held back by report-by-exception (a metric)
        #: readings are published in the order of `points` (the configured order): a
        #: driver reads in whatever order suits the device (Modbus: by table and address)
        self._rank = {p.name: i for i, p in enumerate(points)}
        #: the plan for each sequence of metrics seen. A poll repeats the same sequence, so
        #: ordering and finding the scalings cost one tuple and one dict lookup a poll.
        self._orders: dict[tuple[str, ...], _Plan] = {}

    def scaling(self, metric: str) -> _Scaling:
        return self._scalings.get(metric, _UNSCALED)

    def reset(self) -> None:
        """Forgets what was published, so every point reports again (after a reconnect)."""
        for scaling in self._scalings.values():
            if scaling.report is not None:
                scaling.report.reset()

    def readings(self, sample: Sample) -> list[dict[str, Any]]:
        ts = sample.ts_ms
        readings = sample.readings
        key = tuple(map(_METRIC, readings))
        try:
            plan = self._orders[key]
        except KeyError:
            plan = self._plan_for(key)
        if plan.reorder is not None:
            readings = plan.reorder(readings)  # two or more: itemgetter gives a tuple
        if plan.plain:
            # an int (every register and counter) is published as read; anything else
            # (None, a float that may not be finite, a bool...) goes the general way
            return [{"metric": metric, "value": raw, "ts": ts, "quality": quality}
                    if raw.__class__ is int else _as_read(metric, raw, quality, ts)
                    for metric, raw, quality in readings]
        # The body of _Scaling.apply is inlined: this loop runs for every reading published.
        isfinite = math.isfinite
        out = []
        for (metric, raw, quality), scaling in zip(readings, plan.scalings, strict=True):
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
            if scaling.unit is None:
                out.append({"metric": metric, "value": value, "ts": ts, "quality": quality})
            else:
                out.append({"metric": metric, "value": value, "ts": ts, "quality": quality,
                            "unit": scaling.unit})
        return out

    def _plan_for(self, key: tuple[str, ...]) -> _Plan:
        """The plan for readings with these metrics: the permutation that puts them in the
        configured order (metrics the points do not name keep their place after the
        others), and their scalings in that order."""
        rank, last = self._rank, len(self._rank)
        order = sorted(range(len(key)), key=lambda i: (rank.get(key[i], last), i))
        reorder = None if order == list(range(len(key))) else itemgetter(*order)
        get = self._scalings.get
        plan = _Plan(reorder, [get(key[i], _UNSCALED) for i in order])
        if len(self._orders) >= MAX_ORDERS:  # a stream with ever new subsets: start over
            self._orders.clear()
        self._orders[key] = plan
        return plan


def _as_read(metric: str, raw: Any, quality: str, ts: int) -> dict[str, Any]:
    """One unscaled reading that is not an int: None and non-finite floats are bad."""
    if raw is None or (raw.__class__ is float and not math.isfinite(raw)):
        raw, quality = None, BAD
    return {"metric": metric, "value": raw, "ts": ts, "quality": quality}


#: sequences of metrics remembered per device (a poll has one; a stream a few per sentence)
MAX_ORDERS = 256
_METRIC = itemgetter(0)


__all__ = ["GOOD", "Normalizer", "Scaling"]
