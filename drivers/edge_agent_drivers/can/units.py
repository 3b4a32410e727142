"""DBC unit strings (free text) to UCUM codes, for the units a CAN database commonly uses."""

from __future__ import annotations

_UCUM = {
    "degc": "Cel", "°c": "Cel", "deg c": "Cel", "c": "Cel", "degf": "[degF]", "k": "K",
    "rpm": "/min", "1/min": "/min", "km/h": "km/h", "kph": "km/h", "m/s": "m/s", "mph": "[mi_i]/h",
    "%": "%", "v": "V", "mv": "mV", "a": "A", "ma": "mA", "w": "W", "kw": "kW", "kwh": "kW.h",
    "bar": "bar", "mbar": "mbar", "kpa": "kPa", "pa": "Pa", "psi": "[psi]", "l": "L",
    "l/h": "L/h", "km": "km", "m": "m", "s": "s", "ms": "ms", "h": "h", "nm": "N.m", "deg": "deg",
    "hz": "Hz", "g": "g", "kg": "kg",
}


def ucum(unit: str | None) -> str | None:
    """The UCUM code for a DBC unit; an unknown unit passes through as written."""
    if not unit or not unit.strip():
        return None
    return _UCUM.get(unit.strip().lower(), unit.strip())
