"""A simulated device built from a device profile: its points become registers that hold
the engineering values of the profile's `examples` (from the vendor document).

So a profile is tested through the same transport and driver as the real device: the agent,
configured with `profile: NAME`, must publish exactly the examples back (values, units, word
order), which it only does when the profile's types, orders and scales are self-consistent
and the agent's decoding follows them.
"""

from __future__ import annotations

from typing import Any

from edge_agent import profiles
from edge_agent_simulators.spec import RegisterSpec

_INTEGER_TYPES = ("int16", "uint16", "int32", "uint32", "int64", "uint64")


def load(name: str) -> profiles.Profile:
    entry = profiles.Library(profiles.user_dir()).get(name)
    if entry is None or entry.profile is None:
        problems = "; ".join(entry.problems) if entry else "no such profile"
        raise ValueError(f"profile '{name}' cannot be simulated: {problems}")
    return entry.profile


def raw_value(point: dict[str, Any], value: Any, exponent: int = 0) -> Any:
    """The register content whose reading, scaled, is `value`
    (value = raw * 10^exponent * scale + offset; `exponent` is a SunSpec scale factor)."""
    kind = point.get("type", "bool" if point.get("table") in ("coil", "discrete") else "uint16")
    if kind in ("string", "bool") or isinstance(value, bool | str):
        return value
    raw = (value - point.get("offset", 0.0)) / point.get("scale", 1.0) / 10 ** exponent
    return round(raw) if kind in _INTEGER_TYPES else raw


def register_specs(name: str) -> list[RegisterSpec]:
    """The Modbus registers of profile `name`, holding its examples (0 where it has none),
    or, for a point with a wire example, the document's register words themselves."""
    profile = load(name)
    if profile.driver != "modbus":
        raise ValueError(f"profile '{name}' is for driver '{profile.driver}', not modbus")
    specs = []
    for point in profile.device.get("points", []):
        wire = profile.wire_examples.get(point["name"])
        if wire is not None:  # the document's own words, served as they are
            table = point.get("table", "holding")
            specs += [RegisterSpec(name=f"{point['name']}#{i}", table=table,
                                   address=point["address"] + i, type="uint16", value=word)
                      for i, word in enumerate(wire.registers)]
            continue
        value = profile.examples.get(point["name"], 0)
        exponent = profile.examples.get(point.get("scale_factor") or "", 0)
        fields = {k: point[k] for k in ("table", "address", "type", "order", "length")
                  if k in point}
        specs.append(RegisterSpec(name=point["name"], value=raw_value(point, value, exponent),
                                  **fields))
    return specs
