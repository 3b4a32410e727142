"""Names and units of the OBIS codes electricity meters read out most, so a device needs no
point list to publish them. The names follow the project's metric naming scheme
(docs/profiles.md): quantity, then phase or tariff. Codes not listed are published under a name
made from the code (`c_1_8_3`) with the unit the meter sent.
"""

from __future__ import annotations

#: normalised code (C.D.E, see codec.normalise_code) -> (metric name, UCUM unit or None)
KNOWN: dict[str, tuple[str, str | None]] = {
    "1.8.0": ("energy_active_import_total", "kW.h"),
    "1.8.1": ("energy_active_import_t1", "kW.h"),
    "1.8.2": ("energy_active_import_t2", "kW.h"),
    "2.8.0": ("energy_active_export_total", "kW.h"),
    "2.8.1": ("energy_active_export_t1", "kW.h"),
    "2.8.2": ("energy_active_export_t2", "kW.h"),
    "3.8.0": ("energy_reactive_import_total", "kvar.h"),
    "4.8.0": ("energy_reactive_export_total", "kvar.h"),
    "1.7.0": ("power_active_import_total", "kW"),
    "2.7.0": ("power_active_export_total", "kW"),
    "16.7.0": ("power_active_total", "kW"),
    "21.7.0": ("power_active_import_l1", "kW"),
    "41.7.0": ("power_active_import_l2", "kW"),
    "61.7.0": ("power_active_import_l3", "kW"),
    "32.7.0": ("voltage_l1", "V"),
    "52.7.0": ("voltage_l2", "V"),
    "72.7.0": ("voltage_l3", "V"),
    "31.7.0": ("current_l1", "A"),
    "51.7.0": ("current_l2", "A"),
    "71.7.0": ("current_l3", "A"),
    "14.7.0": ("frequency", "Hz"),
    "13.7.0": ("power_factor", None),
    "0.0.0": ("meter_address", None),
    "96.1.0": ("meter_serial", None),
    "C.1.0": ("meter_serial", None),
    "0.9.1": ("meter_time", None),
    "0.9.2": ("meter_date", None),
    "F.F": ("fatal_error", None),
}

#: codes whose value is an identifier, a time or a status word: published as the text sent
#: (a serial number `00123` is not the number 123)
TEXT = frozenset({"0.0.0", "96.1.0", "C.1.0", "0.9.1", "0.9.2", "F.F"})


def default_name(code: str) -> str:
    """`1.8.3` -> `c_1_8_3`: a valid metric name for a code the table does not know."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in code)
    return f"c_{safe}".lower()
