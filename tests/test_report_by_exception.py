"""Report-by-exception: per-point deadband (absolute or percent) and heartbeat."""

from __future__ import annotations

import itertools

import pytest

from edge_agent.model import BAD, GOOD, PointSpec, Reading, Sample
from edge_agent.normalize import Normalizer
from edge_agent_simulators.waves import Wave
from tests.helpers import SimulatorThread, run_cli, wait_until


def _published(normalizer: Normalizer, ts: int, **values: object) -> dict[str, object]:
    readings = [Reading(name, value, GOOD) for name, value in values.items()]
    return {r["metric"]: r["value"] for r in normalizer.readings(Sample(ts, readings))}


def test_absolute_deadband_compares_with_the_last_published_value():
    n = Normalizer([PointSpec("t", deadband=0.5)])
    assert _published(n, 0, t=20.0) == {"t": 20.0}
    assert _published(n, 1, t=20.4) == {}
    assert _published(n, 2, t=20.5) == {}  # within the band (inclusive)
    assert _published(n, 3, t=20.6) == {"t": 20.6}  # a drift adds up, then goes out
    assert _published(n, 4, t=20.1) == {}
    assert _published(n, 5, t=20.0) == {"t": 20.0}
    assert n.suppressed == 3


def test_percent_deadband_is_relative_to_the_last_published_value():
    n = Normalizer([PointSpec("p", deadband=2, deadband_percent=True)])
    assert _published(n, 0, p=100) == {"p": 100}
    assert _published(n, 1, p=101.9) == {}
    assert _published(n, 2, p=97.9) == {"p": 97.9}


def test_heartbeat_publishes_an_unchanged_value_after_its_period_of_read_time():
    n = Normalizer([PointSpec("h", heartbeat=1.0)])  # no deadband: any change publishes
    assert _published(n, 0, h=5) == {"h": 5}
    assert _published(n, 999, h=5) == {}
    assert _published(n, 1000, h=5) == {"h": 5}
    assert _published(n, 1500, h=6) == {"h": 6}
    assert _published(n, 2400, h=6) == {}
    assert _published(n, 2500, h=6) == {"h": 6}


def test_quality_change_and_non_numeric_change_always_publish_and_reset_reports_afresh():
    n = Normalizer([PointSpec("q", deadband=10), PointSpec("s", deadband=10)])
    assert _published(n, 0, q=1, s="idle") == {"q": 1, "s": "idle"}
    bad = n.readings(Sample(1, [Reading("q", None, BAD), Reading("s", "idle", GOOD)]))
    assert [(r["metric"], r["quality"]) for r in bad] == [("q", BAD)]
    assert _published(n, 2, q=1, s="run") == {"q": 1, "s": "run"}  # good again; text changed
    assert _published(n, 3, q=2, s="run") == {}
    n.reset()  # after a reconnect
    assert _published(n, 4, q=2, s="run") == {"q": 2, "s": "run"}


def test_points_without_settings_always_publish():
    n = Normalizer([PointSpec("plain"), PointSpec("banded", deadband=1)])
    assert _published(n, 0, plain=1, banded=1) == {"plain": 1, "banded": 1}
    assert _published(n, 1, plain=1, banded=1) == {"plain": 1}


SPEC = {"devices": [
    {"name": "plant", "kind": "modbus-tcp", "units": [{"unit": 1, "registers": [
        {"name": "steady", "address": 0, "type": "uint16", "value": 100},
        {"name": "moving", "address": 1, "type": "uint16", "value": {"counter": {"rate": 50}}},
    ]}]},
    {"name": "quiet", "kind": "modbus-tcp", "units": [{"unit": 1, "registers": [
        {"name": "level", "address": 0, "type": "uint16", "scale": 0.1, "value": 50},
    ]}]},
]}


@pytest.fixture
def sims():
    running = SimulatorThread(SPEC)
    yield running
    running.close()


def test_deadband_and_heartbeat_through_the_agent(mosquitto, subscriber, sims, start_agent):
    config = sims.agent_config(mosquitto.url)
    plant, quiet = config["devices"]
    for device in (plant, quiet):
        device["interval"] = 0.1
    plant["points"][0].update(deadband=0.5, heartbeat=1.0)
    quiet["points"][0]["deadband"] = "2%"
    agent = start_agent(config, env={"NODE_NAME": "n1"})

    messages = subscriber.wait_for("n1/plant/telemetry", count=26, timeout=20)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    steady = [r["ts"] for m in messages for r in m["readings"] if r["metric"] == "steady"]
    moving = [m for m in messages if any(r["metric"] == "moving" for r in m["readings"])]
    assert len(moving) == len(messages)  # an unfiltered point is in every message
    span = messages[-1]["readings"][0]["ts"] - messages[0]["readings"][0]["ts"]
    assert 2 <= len(steady) <= span / 1000 + 2  # the first value, then one per heartbeat
    gaps = [b - a for a, b in itertools.pairwise(steady)]
    assert all(1000 <= gap <= 1500 for gap in gaps), gaps

    # all of a poll filtered: no message at all, so seq stays gap-free
    first = subscriber.wait_for("n1/quiet/telemetry")[0]
    assert first["seq"] == 1 and first["readings"][0]["value"] == 50.0
    unit = sims.by_name("quiet").units[1]
    wait_until(lambda: sims.call(lambda: sum(unit.requests.values())) >= 10, what="more polls")
    assert len(subscriber.json_on("n1/quiet/telemetry")) == 1
    sims.call(lambda: setattr(unit.registers[0], "wave", Wave(505)))  # raw: 50.5, +1%: inside 2%
    polled = sims.call(lambda: sum(unit.requests.values()))
    wait_until(lambda: sims.call(lambda: sum(unit.requests.values())) >= polled + 3,
               what="polls of the changed value")
    assert len(subscriber.json_on("n1/quiet/telemetry")) == 1
    sims.call(lambda: setattr(unit.registers[0], "wave", Wave(520)))  # 52.0, +4%: out
    second = subscriber.wait_for("n1/quiet/telemetry", count=2)[1]
    assert second["seq"] == 2 and second["readings"][0]["value"] == 52.0
    assert agent.stop() == 0


def test_invalid_deadband_is_a_config_error_with_its_path(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("devices:\n  - name: d\n    driver: modbus\n    port: tcp://127.0.0.1:1\n"
                      "    points:\n      - {name: x, address: 0, deadband: lots}\n")
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    assert ("devices[0].points[0].deadband: 'lots' is not a number or a percentage"
            in result.stderr)
