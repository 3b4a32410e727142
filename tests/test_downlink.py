"""Downlink writes over MQTT to a simulated Modbus device, and the checks before them."""

from __future__ import annotations

import json

import pytest

from edge_agent.downlink import raw_value
from edge_agent.errors import WriteRefused
from edge_agent.model import PointSpec
from edge_agent.normalize import Scaling
from tests.helpers import SimulatorThread

SPEC = {"devices": [{"name": "plc", "kind": "modbus-tcp", "interval": 0.1, "units": [
    {"unit": 1, "registers": [
        {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "unit": "Cel",
         "writable": True, "value": 200},
        {"name": "counter", "address": 11, "type": "uint16", "value": 7},
        {"name": "ratio", "address": 12, "type": "float32", "writable": True, "value": 0.5},
        {"name": "big", "address": 14, "type": "uint16", "writable": True, "value": 1},
        {"name": "pump", "table": "coil", "address": 3, "type": "bool", "writable": True,
         "value": False},
    ]}]}]}


@pytest.fixture
def plc():
    sims = SimulatorThread(SPEC)
    yield sims
    sims.close()


def _set(subscriber, metric: str, body: object, device: str = "plc") -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    subscriber.client.publish(f"edge/n1/{device}/set/{metric}", payload, qos=1)


def _result(subscriber, metric: str, request_id: object, device: str = "plc") -> dict:
    return subscriber.wait_for(f"n1/{device}/set/{metric}/result",
                               where=lambda m: m.get("id") == request_id)[0]


def test_writes_reach_the_device_unscaled_and_refusals_never_do(
        mosquitto, subscriber, plc, start_agent):
    config = plc.agent_config(mosquitto.url)
    points = {p["name"]: p for p in config["devices"][0]["points"]}
    points["setpoint"].update(min=5, max=90)
    agent = start_agent(config, env={"NODE_NAME": "n1"})
    subscriber.wait_for("n1/plc/telemetry")  # connected, and subscribed before it published
    unit = plc.by_name("plc").units[1]

    # refused before the device: not writable, out of range, wrong type, off the resolution,
    # too big for the raw type, unknown point, unknown device, not JSON, no value
    _set(subscriber, "counter", {"value": 3, "id": "r1"})
    _set(subscriber, "setpoint", {"value": 95.0, "id": "r2"})
    _set(subscriber, "setpoint", {"value": "hot", "id": "r3"})
    _set(subscriber, "setpoint", {"value": 21.55, "id": "r4"})
    _set(subscriber, "big", {"value": 70000, "id": "r5"})
    _set(subscriber, "pump", {"value": 1, "id": "r6"})
    _set(subscriber, "nothing", {"value": 1, "id": "r7"})
    _set(subscriber, "setpoint", {"value": 20, "id": "r8"}, device="ghost")
    _set(subscriber, "setpoint", b"{not json")
    _set(subscriber, "setpoint", {"id": "r9"})
    errors = {rid: _result(subscriber, metric, rid, device)["error"] for rid, metric, device in [
        ("r1", "counter", "plc"), ("r2", "setpoint", "plc"), ("r3", "setpoint", "plc"),
        ("r4", "setpoint", "plc"), ("r5", "big", "plc"), ("r6", "pump", "plc"),
        ("r7", "nothing", "plc"), ("r8", "setpoint", "ghost"), ("r9", "setpoint", "plc")]}
    assert "not writable" in errors["r1"]
    assert "above the maximum 90" in errors["r2"]
    assert "takes a number" in errors["r3"]
    assert "resolution" in errors["r4"]
    assert "outside uint16" in errors["r5"]
    assert "true or false" in errors["r6"]
    assert "has no point 'nothing'" in errors["r7"]
    assert "no device 'ghost'" in errors["r8"]
    assert 'no "value"' in errors["r9"]
    not_json = _result(subscriber, "setpoint", None)
    assert not_json == {"id": None, "ok": False, "error": "the payload is not JSON"}
    assert plc.call(lambda: dict(unit.written)) == {}  # nothing reached the device

    # accepted: scaled register, float, coil
    _set(subscriber, "setpoint", {"value": 21.5, "id": "w1"})
    _set(subscriber, "ratio", {"value": 0.25, "id": "w2"})
    _set(subscriber, "pump", {"value": True, "id": "w3"})
    for rid, metric in [("w1", "setpoint"), ("w2", "ratio"), ("w3", "pump")]:
        assert _result(subscriber, metric, rid) == {"id": rid, "ok": True}
    written = plc.call(lambda: dict(unit.written))
    assert written[10] == 215  # 21.5 Cel / 0.1
    assert (written[12], written[13]) == (0x3E80, 0x0000)  # 0.25 as float32 ABCD
    assert written[3] == 1 and plc.call(lambda: unit.bits["coil"][3]) is True

    readback = subscriber.wait_for("n1/plc/telemetry", where=lambda m: any(
        r["metric"] == "setpoint" and r["value"] == 21.5 for r in m["readings"]))
    assert readback

    assert agent.stop() == 0
    logged = [line for line in agent.log_lines()
              if line.get("event") in ("write_done", "write_refused", "write_failed",
                                       "downlink_rejected")]
    ids = {line.get("request_id") for line in logged}
    assert {"r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "w1", "w2", "w3"} <= ids
    assert {line["event"] for line in logged if line.get("request_id") == "w1"} == {"write_done"}


def test_a_retained_set_message_is_refused_with_an_answer_and_clearing_it_is_silent(
        mosquitto, subscriber, plc, start_agent):
    subscriber.client.publish("edge/n1/plc/set/setpoint", json.dumps(
        {"value": 30, "id": "stale"}).encode(), qos=1, retain=True).wait_for_publish(5)
    agent = start_agent(plc.agent_config(mosquitto.url), env={"NODE_NAME": "n1"})
    stale = _result(subscriber, "setpoint", "stale")
    assert stale["ok"] is False and "retained command is never executed" in stale["error"]
    # clearing it (mosquitto_pub -r -n): an empty payload, ignored without an answer
    subscriber.client.publish("edge/n1/plc/set/setpoint", b"", qos=1,
                              retain=True).wait_for_publish(5)
    _set(subscriber, "big", {"value": 2, "id": "fresh"})
    assert _result(subscriber, "big", "fresh")["ok"] is True
    unit = plc.by_name("plc").units[1]
    assert plc.call(lambda: dict(unit.written)) == {14: 2}  # the stale write never landed
    assert len(subscriber.json_on("set/setpoint/result")) == 1  # the stale one, once
    assert agent.stop() == 0
    rejected = [line for line in agent.log_lines() if line.get("event") == "downlink_rejected"]
    assert [(line["reason"], line["request_id"]) for line in rejected] == [("retained", "stale")]
    assert not [line for line in agent.log_lines() if line.get("event") == "write_refused"]


WRITE_FUNCTIONS = (5, 6, 15, 16)


def _writes_received(sims, unit) -> int:
    """Write requests that reached the simulated device (FC05, FC06, FC15, FC16)."""
    return sims.call(lambda: sum(n for (fc, _, _), n in unit.requests.items()
                                 if fc in WRITE_FUNCTIONS))


def test_hostile_requests_are_each_answered_once_and_none_reaches_the_device(
        mosquitto, subscriber, plc, start_agent):
    agent = start_agent(plc.agent_config(mosquitto.url), env={"NODE_NAME": "n1"})
    subscriber.wait_for("n1/plc/telemetry")
    unit = plc.by_name("plc").units[1]
    hostile = [
        b'{"value": 5002, "id": NaN}',  # a valid value, an id that cannot be echoed
        b'{"value": 5002, "id": Infinity}',
        b'{"value": 5002, "id": {"nested": []}}',
        b'{"value": 5002, "id": "' + b"x" * 200 + b'"}',
        b'{"value": 5002, "id": 9007199254740993}',  # beyond 2**53: echoed rounded
        b'{"value": NaN, "id": "v1"}',
        b'{"value": 1e999, "id": "v2"}',
        b"[" * (1 << 20),  # 1 MiB of nesting
        b"[" * 2000 + b"]" * 2000,
        b'{"value": 1' + b"0" * 400 + b', "id": "v3"}',  # a 400-digit integer
        b'{"value": [1], "id": "v4"}',
        b'{"value": 70000, "id": "v5"}',  # beyond uint16
        b'{"value": 65543, "id": "v6"}',
        b"\xff\xfe not utf-8",
        b'{"value": "\\ud800", "id": "v7"}',
    ]
    for payload in hostile:
        _set(subscriber, "big", payload)
    _set(subscriber, "big", {"value": 9, "id": "last"})  # a good one after them all
    assert _result(subscriber, "big", "last") == {"id": "last", "ok": True}
    answers = subscriber.wait_for("n1/plc/set/big/result", count=len(hostile) + 1)
    assert len(answers) == len(hostile) + 1  # exactly one answer each, no more
    refused = answers[:-1]
    assert all(a["ok"] is False and a["error"] for a in refused)
    ids = [a["id"] for a in refused]
    assert ids[:5] == [None] * 5  # an invalid id is never echoed
    # a sound id is echoed even when the value made the request unreadable
    assert ids[5:] == ["v1", "v2", None, None, "v3", "v4", "v5", "v6", None, "v7"]
    assert "larger than" in refused[7]["error"] and "deeper" in refused[8]["error"]
    assert plc.call(lambda: dict(unit.written)) == {14: 9}
    assert _writes_received(plc, unit) == 1
    assert agent.stop() == 0
    lines = agent.log_lines()
    assert not [line for line in lines if "Task exception" in str(line)
                or line.get("event") in ("downlink_internal_error", "downlink_answer_failed")]


SCALED = Scaling(PointSpec("p", scale=0.1))
PLAIN = Scaling(PointSpec("p"))


@pytest.mark.parametrize(("spec", "scaling", "value", "raw"), [
    (PointSpec("p", writable=True, value_type="int16", scale=0.1), SCALED, 21.5, 215),
    (PointSpec("p", writable=True, value_type="int16", scale=0.1), SCALED, -3.2, -32),
    (PointSpec("p", writable=True, value_type="uint16"), PLAIN, 65535, 65535),
    (PointSpec("p", writable=True, value_type="float32"), PLAIN, 1, 1.0),
    (PointSpec("p", writable=True, value_type="bool"), PLAIN, False, False),
    (PointSpec("p", writable=True, value_type="string"), PLAIN, "abc", "abc"),
    (PointSpec("p", writable=True, minimum=0, maximum=10), PLAIN, 10, 10),
    (PointSpec("p", writable=True), PLAIN, True, True),  # type unknown: taken as given
])
def test_raw_value_accepts(spec, scaling, value, raw):
    result = raw_value(spec, scaling, value)
    assert result == raw and type(result) is type(raw)


@pytest.mark.parametrize(("spec", "value", "message"), [
    (PointSpec("p"), 1, "not writable"),
    (PointSpec("p", writable=True, value_type="int16"), 32768, "outside int16"),
    (PointSpec("p", writable=True, value_type="uint16"), -1, "outside uint16"),
    (PointSpec("p", writable=True, value_type="int16"), 1.5, "resolution"),
    (PointSpec("p", writable=True, value_type="int16"), True, "takes a number"),
    (PointSpec("p", writable=True, value_type="float32"), float("nan"), "finite"),
    (PointSpec("p", writable=True, value_type="float32"), 1e39, "float32"),
    (PointSpec("p", writable=True, value_type="string"), 5, "takes a string"),
    (PointSpec("p", writable=True, minimum=0), -0.5, "below the minimum 0"),
    (PointSpec("p", writable=True, value_type="int16"), 10**400, "out of range"),
    (PointSpec("p", writable=True, value_type="uint16"), 70000, "outside uint16"),
    (PointSpec("p", writable=True, value_type="int16"), 1.0000001, "resolution"),
    (PointSpec("p", writable=True, value_type="float64"), 2**53 + 1, "exactly"),
    (PointSpec("p", writable=True, value_type="float32"), 2**24 + 1, "exactly"),
    (PointSpec("p", writable=True, value_type="uint64"), 2**64, "outside uint64"),
])
def test_raw_value_refuses(spec, value, message):
    with pytest.raises(WriteRefused, match=message):
        raw_value(spec, PLAIN, value)
