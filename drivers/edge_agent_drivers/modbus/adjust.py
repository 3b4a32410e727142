"""Raw values whose meaning depends on the device's own conventions, fixed up per poll.

Two conventions that a static `scale` cannot express: a "not available" marker (SunSpec's
0x8000, ABB's all-FF registers) that must be published as bad rather than as a huge number,
and SunSpec's scale factors, a power of ten read from another register in the same poll.
Pure, and a no-op for devices that use neither (the driver does not even call it).
"""

from __future__ import annotations

from edge_agent.sdk import BAD, GOOD, Reading
from edge_agent_drivers.modbus.config import ModbusPoint

#: SunSpec allows scale factors from -10 to 10; anything else is not a factor
FACTOR_RANGE = range(-10, 11)


class Adjuster:
    def __init__(self, points: list[ModbusPoint]) -> None:
        self.invalid = {p.name: frozenset(p.invalid) for p in points if p.invalid}
        self.factors = [(p.name, p.scale_factor) for p in points if p.scale_factor]

    @property
    def needed(self) -> bool:
        return bool(self.invalid or self.factors)

    def apply(self, readings: list[Reading]) -> list[Reading]:
        out = list(readings)
        index = {r.metric: i for i, r in enumerate(out)}
        for name, markers in self.invalid.items():
            i = index.get(name)
            if i is not None and type(out[i].value) is int and out[i].value in markers:
                out[i] = Reading(name, None, BAD)
        for name, factor_name in self.factors:
            i, j = index.get(name), index.get(factor_name)
            if i is None or j is None or out[i].value is None:
                continue
            factor = out[j]
            if factor.value not in FACTOR_RANGE or isinstance(factor.value, bool):
                out[i] = Reading(name, None, BAD)
                continue
            raw, exponent = out[i].value, factor.value
            # dividing by 10^n keeps 1234 at -2 an exact 12.34, where * 0.01 would not
            value = raw * 10 ** exponent if exponent >= 0 else raw / 10 ** -exponent
            quality = out[i].quality if factor.quality == GOOD else factor.quality
            out[i] = Reading(name, value, quality)
        return out
