"""Variable data records (EN 13757-3) to named readings, decoded by pyMeterBus.

pyMeterBus (BSD-3-Clause, maintained) knows the DIF/VIF tables; this module gives each record
a stable name and one unit per name, so a dashboard never sees `energy` in Wh one day and in
GJ the next: every energy is kW.h (J converted), every power kW, every flow m3/h, every
duration h. A name is the quantity, then what tells two records of it apart:
`energy`, `energy_s1` (storage 1, e.g. the last billing date), `energy_t2` (tariff 2),
`energy_u1` (sub-unit 1), `power_max`; a second record with the same name gets `_2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import meterbus

from edge_agent_drivers.mbus.frames import Frame, FrameError, identification

#: pyMeterBus record type -> (base name, UCUM unit of that name, None for text)
QUANTITIES: dict[str, tuple[str, str | None]] = {
    "ENERGY_WH": ("energy", "kW.h"), "ENERGY_J": ("energy", "kW.h"),
    "VOLUME": ("volume", "m3"), "MASS": ("mass", "kg"),
    "ON_TIME": ("on_time", "h"), "OPERATING_TIME": ("operating_time", "h"),
    "POWER_W": ("power", "kW"), "POWER_J_H": ("power", "kW"),
    "VOLUME_FLOW": ("volume_flow", "m3/h"), "VOLUME_FLOW_EXT": ("volume_flow", "m3/h"),
    "VOLUME_FLOW_EXT_S": ("volume_flow", "m3/h"), "MASS_FLOW": ("mass_flow", "kg/h"),
    "FLOW_TEMPERATURE": ("flow_temperature", "Cel"),
    "RETURN_TEMPERATURE": ("return_temperature", "Cel"),
    "TEMPERATURE_DIFFERENCE": ("temperature_difference", "K"),
    "EXTERNAL_TEMPERATURE": ("external_temperature", "Cel"),
    "PRESSURE": ("pressure", "bar"),
    "DATE": ("date", None), "DATE_TIME_GENERAL": ("date_time", None),
    "FABRICATION_NO": ("fabrication_number", None), "IDENTIFICATION": ("identification", None),
    "ERROR_FLAGS": ("error_flags", None), "FIRMWARE_VERSION": ("firmware_version", None),
    "SOFTWARE_VERSION": ("software_version", None),
}
#: pyMeterBus unit -> (UCUM unit, factor to it)
UNITS: dict[str, tuple[str, float]] = {
    "WH": ("kW.h", 1e-3), "KWH": ("kW.h", 1.0), "J": ("kW.h", 1 / 3.6e6),
    "M3": ("m3", 1.0), "L": ("m3", 1e-3), "KG": ("kg", 1.0),
    "W": ("kW", 1e-3), "J_H": ("kW", 1 / 3.6e6),
    "M3_H": ("m3/h", 1.0), "M3_MIN": ("m3/h", 60.0), "M3_S": ("m3/h", 3600.0),
    "KG_H": ("kg/h", 1.0), "C": ("Cel", 1.0), "K": ("K", 1.0), "BAR": ("bar", 1.0),
    "SECONDS": ("h", 1 / 3600), "MINUTES": ("h", 1 / 60), "HOURS": ("h", 1.0),
    "DAYS": ("h", 24.0), "V": ("V", 1.0), "A": ("A", 1.0), "PERCENT": ("%", 1.0),
}
_FUNCTIONS = {"MAXIMUM_VALUE": "_max", "MINIMUM_VALUE": "_min", "ERROR_STATE_VALUE": "_error"}


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded record: its stable name, value (number or text) and UCUM unit."""

    name: str
    value: float | str | None  # None: the meter sent a number that is none (NaN, infinity)
    unit: str | None


@dataclass(frozen=True, slots=True)
class Telegram:
    identification: str
    manufacturer: str
    medium: int
    records: list[Record]
    more_follow: bool


def _enum_name(text: Any) -> str:
    return str(text).rpartition(".")[2]


def decode(frame: Frame, *, manufacturer_data: bool = False) -> Telegram:
    """The records of one RSP_UD long frame; FrameError if it cannot be decoded."""
    try:
        telegram = meterbus.load(frame.raw)
        header = telegram.body.bodyHeader.interpreted
        records = list(telegram.records)
    except Exception as exc:  # pyMeterBus raises many types on malformed data
        raise FrameError("decode", f"undecodable variable data: {exc}") from None
    if not isinstance(telegram, meterbus.TelegramLong):
        raise FrameError("decode", "not a variable data response")
    out: list[Record] = []
    seen: dict[str, int] = {}
    more = False
    for record in records:
        try:
            item = _record(record, manufacturer_data)
            more = more or bool(record.more_records_follow)
        except Exception as exc:  # one odd record does not cost the others
            raise FrameError("decode", f"undecodable record: {exc}") from None
        if item is None:
            continue
        count = seen.get(item.name, 0) + 1
        seen[item.name] = count
        if count > 1:
            item = Record(f"{item.name}_{count}", item.value, item.unit)
        out.append(item)
    return Telegram(identification(frame) or "", str(header.get("manufacturer", "")),
                    _int(header.get("medium", 0)), out, more)


def _record(record: Any, manufacturer_data: bool) -> Record | None:
    info = record.interpreted
    function = _enum_name(info.get("function", ""))
    kind = _enum_name(info.get("type", "None"))
    if function in ("SPECIAL_FUNCTION", "SPECIAL_FUNCTION_FILL_BYTE", "MORE_RECORDS_FOLLOW"):
        if manufacturer_data and function == "SPECIAL_FUNCTION":
            return Record("manufacturer_data", str(info.get("value", "")), None)
        return None
    base, unit = QUANTITIES.get(kind, (f"vif_{kind.lower()}", None))
    name = base + _FUNCTIONS.get(function, "")
    storage = _int(info.get("storage_number", 0))
    tariff, device = _int(info.get("tariff", 0)), _int(info.get("device", 0))
    name += (f"_s{storage}" if storage else "") + (f"_t{tariff}" if tariff else "") + (
        f"_u{device}" if device else "")
    value = info.get("value")
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        target, factor = UNITS.get(_enum_name(info.get("unit", "")), (unit, 1.0))
        number = float(value) * factor
        if unit is None:  # a quantity this module has no fixed unit for: the record's own
            unit = target
        if not math.isfinite(number):  # a real (DIF 5) can carry NaN or infinity
            return Record(name, None, unit)
        return Record(name, round(number, 9), unit)
    return Record(name, str(value), None)


def _int(value: Any) -> int:
    try:
        return int(str(value), 0)
    except (TypeError, ValueError):
        return 0
