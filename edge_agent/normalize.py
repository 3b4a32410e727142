"""Turns a driver's raw sample into published readings: scale, offset, unit, quality, ts.

Runs for every reading, so the per-metric work is precomputed once per device: a plain dict
lookup and, for scaled numbers, one multiply-add (or a divide, see `_Scaling`).
"""

from __future__ import annotations

import math
from typing import Any

from edge_agent.model import BAD, GOOD, PointSpec, Sample


class _Scaling:
    """value = raw * scale + offset, computed so that 215 * 0.1 gives 21.5, not 21.500000000000004.

    A scale that is the reciprocal of a whole number is applied as a division by that number,
    which is exact for decimal fractions, where the multiplication is not.
    """

    __slots__ = ("divisor", "identity", "offset", "scale", "unit")

    def __init__(self, spec: PointSpec) -> None:
        self.scale, self.offset, self.unit = spec.scale, spec.offset, spec.unit
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


_UNSCALED = _Scaling(PointSpec("_"))


class Normalizer:
    """Per-device: knows each metric's scaling and unit."""

    def __init__(self, points: list[PointSpec]) -> None:
        self._scalings = {p.name: _Scaling(p) for p in points}

    def scaling(self, metric: str) -> _Scaling:
        return self._scalings.get(metric, _UNSCALED)

    def readings(self, sample: Sample) -> list[dict[str, Any]]:
        ts = sample.ts_ms
        scalings = self._scalings
        out = []
        for metric, raw, quality in sample.readings:
            scaling = scalings.get(metric, _UNSCALED)
            if raw is None:
                value, quality = None, BAD
            else:
                value = scaling.apply(raw)
                if value.__class__ is float and not math.isfinite(value):
                    value, quality = None, BAD
            reading = {"metric": metric, "value": value, "ts": ts, "quality": quality}
            if scaling.unit is not None:
                reading["unit"] = scaling.unit
            out.append(reading)
        return out


__all__ = ["GOOD", "Normalizer"]
