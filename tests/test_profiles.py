"""Device profiles: every shipped profile validates and, served by a simulator built from it,
comes back through the agent and a real Mosquitto as the document's values and units.

One agent polls every profile at once (one Modbus TCP simulator with one unit per profile,
an NMEA receiver and an MT-SICS scale on ptys), so the whole library costs a few seconds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from edge_agent import config as config_mod
from edge_agent import profiles
from edge_agent.errors import ConfigError
from tests.helpers import SimulatorThread, run_cli

LIBRARY = profiles.Library()
SHIPPED = sorted(LIBRARY.names)
MODBUS = [n for n in SHIPPED if (LIBRARY.get(n).profile or profiles.Profile).driver == "modbus"]
#: the naming scheme (docs/profiles.md): a quantity, then qualifiers, then where
METRIC = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_validates_names_its_source_and_has_an_example_per_point(name):
    entry = LIBRARY.get(name)
    assert entry.problems == [] and entry.profile is not None, entry.problems
    profile = entry.profile
    assert profile.source.document and profile.source.revision and profile.source.publisher
    for point in profile.point_names:
        assert METRIC.match(point), f"{point} does not follow the naming scheme"
    if profile.driver == "modbus":
        missing = [p for p in profile.point_names if p not in profile.examples]
        assert not missing, f"no example value for {missing}"


def test_the_library_holds_at_least_15_profiles_and_one_metric_has_one_unit_everywhere():
    assert len(SHIPPED) >= 15
    units: dict[str, set[str | None]] = {}
    for name in SHIPPED:
        for items in LIBRARY.get(name).profile.point_lists.values():
            for point in items:
                units.setdefault(point["name"], set()).add(point.get("unit"))
    mixed = {metric: found for metric, found in units.items() if len(found) > 1}
    assert not mixed, f"one metric name, several units: {mixed}"


def test_a_profile_that_does_not_validate_is_reported_with_its_file_and_field(tmp_path):
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({
        "title": "t", "driver": "modbus", "manufacturer": "m", "models": ["x"],
        "source": {"publisher": "p", "document": "d", "revision": "1"},
        "device": {"points": [{"name": "v", "address": 0, "type": "float33"}]}}))
    entry = profiles.Library(tmp_path).get("broken")
    assert entry.profile is None
    assert any("broken.yaml" in p and "device.points[0].type" in p for p in entry.problems)
    with pytest.raises(ConfigError) as caught:
        validate({"profiles_dir": str(tmp_path),
                  "devices": [{"name": "m", "profile": "broken", "port": "tcp://h:502"}]})
    assert caught.value.problems[0].startswith("devices[0].profile: profile 'broken' is invalid")


def validate(data: dict) -> config_mod.AgentConfig:
    return config_mod.validate(data, environ={})


def test_profile_supplies_points_and_settings_the_entry_overrides_adds_and_picks():
    config = validate({"devices": [{
        "name": "m1", "profile": "eastron-sdm630", "port": "/dev/ttyUSB0", "unit": 7,
        "baudrate": 19200, "points_only": ["voltage_l1", "power_active_total"],
        "points": [{"name": "power_active_total", "deadband": "2%"},
                   {"name": "serial_number", "address": 0xFC00, "type": "uint32"}]}]})
    device = config.devices[0]
    assert device.driver == "modbus"  # taken from the profile
    assert (device.baudrate, device.parity, device.interval) == (19200, "N", 5.0)
    assert [p.name for p in device.points] == ["voltage_l1", "power_active_total",
                                               "serial_number"]
    total = device.points[1]
    assert (total.table, total.address, total.type, total.unit, total.deadband) == (
        "input", 0x34, "float32", "W", "2%")
    assert device.profile == "eastron-sdm630"


def test_unknown_profile_names_the_field_and_the_known_profiles(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"devices": [
        {"name": "ok", "driver": "modbus", "port": "tcp://h:1",
         "points": [{"name": "a", "address": 0}]},
        {"name": "m", "profile": "eastron-sdm63", "port": "tcp://h:2"}]}))
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = next(x for x in result.stderr.splitlines() if x.startswith("devices[1].profile:"))
    assert "'eastron-sdm63' is not a known profile" in line
    assert "did you mean eastron-sdm630" in line and "sunspec-inverter" in line


@pytest.mark.parametrize(("entry", "problem"), [
    ({"points_only": ["voltage_l9"]}, "devices[0].points_only: the profile has no point named "
                                      "voltage_l9"),
    ({"driver": "nmea"}, "devices[0].profile: 'eastron-sdm120' is a profile for driver "
                         "'modbus', not 'nmea'"),
    ({"points": [{"name": "voltage_l1", "type": "float33"}]}, "devices[0].points[0].type:"),
])
def test_bad_profile_use_is_a_config_error_naming_the_field(entry, problem):
    with pytest.raises(ConfigError) as caught:
        validate({"devices": [{"name": "m", "profile": "eastron-sdm120",
                               "port": "tcp://h:502", **entry}]})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_user_profiles_from_env_dir_add_and_replace_shipped_ones(tmp_path):
    shipped = LIBRARY.get("renke-wind-speed").profile
    mine = shipped.model_dump(exclude_none=True)
    mine["device"]["points"] = [{"name": "speed_wind", "address": 9, "type": "uint16",
                                 "scale": 0.01, "unit": "m/s"}]
    mine["examples"] = {"speed_wind": 1.5}
    del mine["name"]
    (tmp_path / "renke-wind-speed.yaml").write_text(yaml.safe_dump(mine))
    (tmp_path / "my-pump.yaml").write_text(yaml.safe_dump({**mine, "title": "pump"}))
    env = {profiles.ENV_DIR: str(tmp_path)}
    config = config_mod.validate(
        {"devices": [{"name": "w", "profile": "renke-wind-speed", "port": "tcp://h:1"},
                     {"name": "p", "profile": "my-pump", "port": "tcp://h:1", "unit": 2}]},
        environ=env)
    assert config.devices[0].points[0].address == 9
    listing = run_cli("profiles", env=env)
    assert listing.returncode == 0
    assert re.search(r"^my-pump\s+modbus\s+user", listing.stdout, re.M)
    assert re.search(r"^renke-wind-speed\s+modbus\s+user \(replaces shipped\)", listing.stdout,
                     re.M)


def test_profiles_command_lists_them_and_shows_one_with_its_source():
    listing = run_cli("profiles")
    assert listing.returncode == 0
    for name in SHIPPED:
        assert re.search(rf"^{re.escape(name)}\s", listing.stdout, re.M), name
    shown = run_cli("profiles", "gavazzi-em24")
    assert shown.returncode == 0
    assert "EM24-DIN COMMUNICATION PROTOCOL" in shown.stdout
    assert "Version 3 Revision 1" in shown.stdout
    assert re.search(r"voltage_l1\s+holding\s+0x0000\s+int32\s+CDAB\s+0\.1\s+V", shown.stdout)
    unknown = run_cli("profiles", "em24")
    assert unknown.returncode == 2
    assert "'em24' is not a known profile" in unknown.stderr


def approx_equal(published, expected, point_type: str) -> bool:
    if isinstance(expected, str | bool) or point_type == "string":
        return published == expected
    tolerance = 1e-6 if point_type == "float32" else 1e-9
    return math.isclose(published, expected, rel_tol=tolerance, abs_tol=1e-9)


def test_every_profile_end_to_end_publishes_the_documents_values_and_units(
        mosquitto, subscriber, start_agent, tmp_path: Path):
    sims = SimulatorThread({"devices": [
        {"name": "modbus", "kind": "modbus-tcp",
         "units": [{"unit": i + 1, "profile": name} for i, name in enumerate(MODBUS)]},
        {"name": "gnss", "kind": "nmea", "rate": 5},
        {"name": "scale", "kind": "scale", "unit": "kg", "cycle": 2.0}]})
    try:
        port = sims.by_name("modbus").where
        devices = [{"name": name, "profile": name, "port": port, "unit": i + 1,
                    "interval": 0.5, "timeout": 2.0} for i, name in enumerate(MODBUS)]
        devices.append({"name": "gnss", "profile": "gnss-nmea",
                        "port": sims.by_name("gnss").where})
        devices.append({"name": "scale", "profile": "mettler-mt-sics",
                        "port": sims.by_name("scale").where, "interval": 0.2})
        start_agent({"mqtt": {"url": mosquitto.url}, "http": {"enabled": False},
                     "devices": devices})
        mismatches = []
        for name in MODBUS:
            profile = LIBRARY.get(name).profile
            [message] = subscriber.wait_for(f"/{name}/telemetry", timeout=20)[:1]
            readings = {r["metric"]: r for r in message["readings"]}
            for point in profile.device["points"]:
                reading = readings.get(point["name"])
                wire = profile.wire_examples.get(point["name"])
                expected = wire.value if wire else profile.examples[point["name"]]
                if reading is None:
                    mismatches.append(f"{name}.{point['name']}: not published")
                elif reading["quality"] != "good" or reading.get("unit") != point.get("unit"):
                    mismatches.append(f"{name}.{point['name']}: {reading}")
                elif not approx_equal(reading["value"], expected, point.get("type", "uint16")):
                    mismatches.append(f"{name}.{point['name']}: published {reading['value']}, "
                                      f"the document says {expected}")
        assert not mismatches, "\n".join(mismatches)

        fixes = subscriber.wait_for("/gnss/telemetry", where=lambda m: any(
            r["metric"] == "latitude" for r in m["readings"]))
        position = {r["metric"]: r for r in fixes[0]["readings"]}
        assert position["latitude"]["unit"] == "deg" and position["altitude"]["unit"] == "m"
        weighed = subscriber.wait_for("/scale/telemetry")
        weight = {r["metric"]: r for r in weighed[0]["readings"]}
        assert weight["weight"]["unit"] == "kg" and isinstance(weight["stable"]["value"], bool)
    finally:
        sims.close()


def test_errors_in_points_of_a_profile_device_are_numbered_as_in_the_users_entry():
    # merged, "extra" is the profile's 15th point and "frequency" its 8th: the user's file
    # has them at 0 and 1, and that is where the errors must point
    for points, path in (
            ([{"name": "extra", "address": 1, "type": "int8"}], "devices[0].points[0].type:"),
            ([{"name": "x", "address": 1}, {"name": "frequency", "table": "tabel"}],
             "devices[0].points[1].table:")):
        with pytest.raises(ConfigError) as caught:
            validate({"devices": [{"name": "m", "profile": "eastron-sdm120",
                                   "port": "tcp://h:1", "points": points}]})
        assert [p.split(" ", 1)[0] for p in caught.value.problems] == [path]


def test_a_simulated_profile_unit_prints_an_agent_config_naming_the_profile():
    sims = SimulatorThread({"devices": [{"name": "m", "kind": "modbus-tcp", "units": [
        {"unit": 5, "profile": "renke-soil",
         "registers": [{"name": "conductivity", "address": 2, "value": 7},
                       {"name": "salinity", "address": 3, "value": 9}]}]}]})
    try:
        [device] = sims.agent_config("mqtt://127.0.0.1:1883")["devices"]
        assert device["profile"] == "renke-soil" and device["unit"] == 5
        assert [p["name"] for p in device["points"]] == ["conductivity", "salinity"]
        config = validate({"devices": [device]})
        assert [p.name for p in config.devices[0].points] == [
            "moisture_soil", "temperature", "conductivity", "salinity"]
        registers = {r.address: r for r in sims.by_name("m").units[5].registers}
        assert registers[2].wave.value() == 7  # the spec's own register replaced the profile's
        assert registers[0].wave.value() == 164  # 16.4 % at scale 0.1
    finally:
        sims.close()


def test_docs_list_every_shipped_profile_with_its_source_revision():
    page = (Path(__file__).resolve().parents[1] / "docs" / "profiles.md").read_text()
    for name in SHIPPED:
        source = LIBRARY.get(name).profile.source
        row = next((line for line in page.splitlines() if line.startswith(f"| `{name}` |")), "")
        assert source.revision in row and source.document in row, (
            f"docs/profiles.md lacks {name} or its source: run scripts/profiles-table")
