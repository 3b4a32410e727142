"""Readings are published in the order the points are configured, whatever order the device
is read in (Modbus reads coils, then holding registers, by address)."""

from __future__ import annotations

from edge_agent.model import PointSpec, Reading, Sample
from edge_agent.normalize import MAX_ORDERS, Normalizer
from tests.helpers import SimulatorThread


def _metrics(normalizer: Normalizer, *names: str) -> list[str]:
    sample = Sample(1, [Reading(name, 1) for name in names])
    return [r["metric"] for r in normalizer.readings(sample)]


def test_readings_follow_the_points_order_and_unknown_metrics_keep_theirs_after():
    normalizer = Normalizer([PointSpec(name) for name in ("c", "a", "b")])
    assert _metrics(normalizer, "a", "b", "c") == ["c", "a", "b"]
    assert _metrics(normalizer, "a", "b", "c") == ["c", "a", "b"]  # the remembered order
    assert _metrics(normalizer, "y", "b", "x", "c") == ["c", "b", "y", "x"]
    assert _metrics(normalizer, "b", "a") == ["a", "b"]  # a stream's subset
    assert _metrics(normalizer, "c", "b") == ["c", "b"]  # already in order


def test_the_remembered_orders_are_bounded():
    normalizer = Normalizer([PointSpec("a"), PointSpec("b")])
    for i in range(MAX_ORDERS * 2):
        assert _metrics(normalizer, f"x{i}", "b", "a") == ["a", "b", f"x{i}"]
    assert len(normalizer._orders) <= MAX_ORDERS


SPEC = {"devices": [{"name": "boiler", "kind": "modbus-tcp", "interval": 0.1, "units": [
    {"unit": 1, "registers": [
        {"name": "temperature", "address": 5, "type": "int16", "scale": 0.1, "value": 200},
        {"name": "pressure", "address": 1, "type": "float32", "value": 2.5},
        {"name": "burner_on", "table": "coil", "address": 0, "type": "bool", "value": True},
        {"name": "hours", "table": "input", "address": 0, "type": "uint16", "value": 7},
    ]}]}]}


def test_telemetry_comes_out_in_the_configured_order(mosquitto, subscriber, start_agent):
    sims = SimulatorThread(SPEC)
    try:
        agent = start_agent(sims.agent_config(mosquitto.url), env={"NODE_NAME": "n1"})
        [message] = subscriber.wait_for("n1/boiler/telemetry")
        configured = [p["name"] for p in sims.agent_config(mosquitto.url)["devices"][0]["points"]]
        assert configured == ["temperature", "pressure", "burner_on", "hours"]
        assert [r["metric"] for r in message["readings"]] == configured
        assert agent.stop() == 0
    finally:
        sims.close()


def test_unscaled_points_publish_what_was_read_and_what_was_not_as_bad():
    """Points without scale, unit or report-by-exception take the normaliser's short way
    (edge_agent.normalize._Plan.plain): the readings must be the ones the general way makes."""
    plain = Normalizer([PointSpec(name) for name in "abcdefg"])
    general = Normalizer([PointSpec(name) for name in "abcdef"] + [PointSpec("g", unit="V")])
    raws = [("b", 7, "uncertain"), ("a", None, "good"), ("c", float("nan"), "good"),
            ("d", True, "good"), ("e", "on", "good"), ("f", 2.5, "good"), ("g", -1, "good")]
    sample = Sample(5, [Reading(*raw) for raw in raws])
    expected = [
        {"metric": "a", "value": None, "ts": 5, "quality": "bad"},
        {"metric": "b", "value": 7, "ts": 5, "quality": "uncertain"},
        {"metric": "c", "value": None, "ts": 5, "quality": "bad"},
        {"metric": "d", "value": True, "ts": 5, "quality": "good"},
        {"metric": "e", "value": "on", "ts": 5, "quality": "good"},
        {"metric": "f", "value": 2.5, "ts": 5, "quality": "good"},
        {"metric": "g", "value": -1, "ts": 5, "quality": "good"},
    ]
    assert plain.readings(sample) == expected
    assert general.readings(sample) == [*expected[:-1], {**expected[-1], "unit": "V"}]
    assert type(plain.readings(sample)[3]["value"]) is bool
