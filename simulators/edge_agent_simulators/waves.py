"""How a simulated value moves over time: constant, counter, sine, random walk."""

from __future__ import annotations

import math
import random
import time
from typing import Any


class Wave:
    """A value that is a function of time since the simulator started."""

    def __init__(self, spec: Any) -> None:
        self.start = time.monotonic()
        self.kind, params = _parse(spec)
        self.params = params
        self._walk = float(params.get("start", 0.0))
        self._rng = random.Random(params.get("seed", 1))

    def value(self) -> Any:
        p, elapsed = self.params, time.monotonic() - self.start
        if self.kind == "constant":
            return p["value"]
        if self.kind == "counter":
            return p.get("start", 0) + int(elapsed * p.get("rate", 1.0)) * p.get("step", 1)
        if self.kind == "sine":
            phase = 2 * math.pi * elapsed / p.get("period", 60.0)
            return p.get("offset", 0.0) + p.get("amplitude", 1.0) * math.sin(phase)
        step = p.get("step", 0.1)  # random_walk, bounded
        self._walk += self._rng.uniform(-step, step)
        self._walk = min(max(self._walk, p.get("min", -math.inf)), p.get("max", math.inf))
        return self._walk


def _parse(spec: Any) -> tuple[str, dict[str, Any]]:
    """`5`, `{constant: 5}`, `{sine: {amplitude: 2}}`, `{counter: {}}`..."""
    if not isinstance(spec, dict):
        return "constant", {"value": spec}
    if len(spec) != 1:
        raise ValueError(f"a value is one of constant, counter, sine, random_walk: {spec}")
    (kind, params), = spec.items()
    if kind not in ("constant", "counter", "sine", "random_walk"):
        raise ValueError(f"'{kind}' is not one of constant, counter, sine, random_walk")
    if kind == "constant":
        return kind, {"value": params}
    return kind, dict(params or {})
