"""`edge-agent scan --modbus`: finds the units on a (simulated) line, recognises them by
identification (43/14), SunSpec marker and model chain, or identification register, suggests
a profile with a config snippet that validates, and never writes. The search is the Modbus
driver's (`ModbusDriver.discover`); the core hands it the profiles' match rules."""

from __future__ import annotations

import pytest
import yaml

from edge_agent import config as config_mod
from tests.helpers import SimulatorThread, run_cli

READS = {3, 4, 43}


def sunspec_unit(unit: int) -> dict:
    """A SunSpec map: "SunS", model 1 (length 65), model 103 (length 50), end marker."""
    registers = [
        {"name": "marker", "address": 40000, "type": "uint32", "value": 0x53756E53},
        {"name": "id1", "address": 40002, "value": 1}, {"name": "len1", "address": 40003,
                                                         "value": 65},
        {"name": "id103", "address": 40069, "value": 103},
        {"name": "len103", "address": 40070, "value": 50},
        {"name": "end", "address": 40121, "value": 0xFFFF},
        {"name": "mn", "address": 40004, "type": "string", "length": 32, "value": "Fronius"},
        {"name": "md", "address": 40020, "type": "string", "length": 32, "value": "Symo 8.2"}]
    return {"unit": unit, "registers": registers}


@pytest.fixture
def line():
    sims = SimulatorThread({"devices": [{"name": "line", "kind": "modbus-tcp", "units": [
        {"unit": 2, "profile": "schneider-iem3x50",
         "identification": {0: "Schneider Electric", 1: "A9MEM3155", 2: "2.1.4"}},
        {"unit": 4, "profile": "gavazzi-em24",
         "registers": [{"name": "id_code", "address": 0x000B, "value": 47}]},
        sunspec_unit(7),
        {"unit": 9, "registers": [{"name": "x", "address": 0, "value": 1}]}]}]})
    yield sims
    sims.close()


def entries(output: str) -> list[tuple[str, dict | None]]:
    """(description, config or None) per device the scan printed."""
    found: list[tuple[str, dict | None]] = []
    lines = output.splitlines()
    for i, text in enumerate(lines):
        if text.startswith("  unit "):
            block = []
            if i + 1 < len(lines) and lines[i + 1] == "    config:":
                for more in lines[i + 2:]:
                    if not more.startswith("      "):
                        break
                    block.append(more[6:])
            found.append((text.strip(), yaml.safe_load("\n".join(block))[0] if block else None))
    return found


def test_scan_finds_units_suggests_profiles_and_only_reads(line):
    port = line.by_name("line").where
    result = run_cli("scan", "--modbus", port, "--units", "1-10", "--timeout", "0.2")
    assert result.returncode == 0, result.stderr
    found = entries(result.stdout)
    described = {text.split(";")[0] for text, _ in found}
    assert described == {"unit 2: answers", "unit 4: answers", "unit 7: answers",
                         "unit 9: answers"}  # and ids 1, 3, 5, 6, 8, 10 were silent
    texts = "\n".join(text for text, _ in found)
    assert "vendor 'Schneider Electric', product_code 'A9MEM3155'" in texts
    assert ("suggested profile: schneider-iem3x50 (identification says Schneider Electric)"
            in texts)
    assert "suggested profile: gavazzi-em24 (identification code 47 at holding 0x000B)" in texts
    assert ("sunspec_manufacturer 'Fronius', sunspec_model 'Symo 8.2'; SunSpec map at 40000: "
            "models 1, 103") in texts
    assert "unit 9: answers; no profile recognised" in texts
    devices = [config for _, config in found if config]
    assert [(d["unit"], d["profile"]) for d in devices] == [
        (2, "schneider-iem3x50"), (4, "gavazzi-em24"), (7, "sunspec-common"),
        (7, "sunspec-inverter")]
    config = config_mod.validate({"devices": devices}, environ={})
    assert [d.unit for d in config.devices] == [2, 4, 7, 7]
    for unit in line.by_name("line").units.values():
        assert {code for code, _, _ in unit.requests} <= READS  # never a write
        assert not unit.written


@pytest.mark.parametrize("text", ["0-3", "5-2", "a", "1-300"])
def test_bad_unit_ranges_are_refused(text):
    result = run_cli("scan", "--modbus", "tcp://127.0.0.1:1", "--units", text)
    assert result.returncode == 2 and "--units" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_port_is_an_error_not_a_traceback():
    result = run_cli("scan", "--modbus", "tcp://127.0.0.1:1", "--units", "1")
    assert result.returncode == 2
    assert "scan: tcp://127.0.0.1:1: cannot open" in result.stdout
    assert "Traceback" not in result.stderr


def test_scan_over_an_rtu_line_on_a_pty():
    sims = SimulatorThread({"devices": [{"name": "rtu", "kind": "modbus-rtu", "units": [
        {"unit": 3, "profile": "gavazzi-em340",
         "registers": [{"name": "id_code", "address": 0x000B, "value": 341}]}]}]})
    try:
        path = sims.by_name("rtu").where
        result = run_cli("scan", "--modbus", path, "--units", "1-4", "--timeout", "0.2",
                         "--baudrate", "9600")
        assert result.returncode == 0, result.stderr
        [(text, device)] = entries(result.stdout)
        assert text.startswith("unit 3: answers; suggested profile: gavazzi-em340")
        assert device == {"name": "gavazzi-em340-3", "driver": "modbus",
                          "profile": "gavazzi-em340", "port": path, "unit": 3,
                          "baudrate": 9600, "parity": "N", "stopbits": 1}
        unit = sims.by_name("rtu").units[3]
        assert {code for code, _, _ in unit.requests} <= READS and not unit.written
    finally:
        sims.close()
