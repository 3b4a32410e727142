"""`mqtt.format: sparkplug`: the agent as a Sparkplug B 3.0 edge node, against a real broker.

Every message is decoded with the independent decoder of test_sparkplug_decoder (no use of
the agent's .proto), and checked against the specification's rules.
"""

from __future__ import annotations

import json
import signal
import struct
import time
from typing import Any

import pytest

from tests.helpers import SimulatorThread, Subscriber, wait_until
from tests.test_sparkplug_decoder import DATATYPES, decode, signed

GROUP = "plant"
NODE = "edge-sp"

SIM = {"devices": [{
    "name": "boiler-1", "kind": "modbus-tcp", "interval": 0.1,
    "units": [{"unit": 1, "registers": [
        {"name": "temperature", "address": 0, "type": "int16", "scale": 0.1, "unit": "Cel",
         "value": {"sine": {"offset": 65, "amplitude": 8, "period": 3}}},
        {"name": "setpoint", "address": 1, "type": "int16", "writable": True, "value": -5},
        {"name": "pressure", "address": 2, "type": "float32", "unit": "bar",
         "value": {"random_walk": {"start": 2.1, "step": 0.05, "min": 1.5, "max": 3.0}}},
        {"name": "burner_on", "table": "coil", "address": 0, "type": "bool", "value": True},
    ]}],
}]}


@pytest.fixture
def boiler():
    sims = SimulatorThread(SIM)
    yield sims
    sims.close()


def sparkplug_config(sims: SimulatorThread, broker_url: str, tmp_path: Any,
                     **sparkplug: Any) -> dict[str, Any]:
    config = sims.agent_config(broker_url, node=NODE)
    config["mqtt"]["format"] = "sparkplug"
    config["mqtt"]["sparkplug"] = {"group_id": GROUP, **sparkplug}
    config["buffer"] = {"path": str(tmp_path / "buffer.sqlite3")}
    for device in config["devices"]:
        device["interval"] = 0.1
    return config


class SparkplugView:
    """Decodes what a subscriber received on spBv1.0/# into (verb, device, payload) in order."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber

    def messages(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        out = []
        with self.subscriber._lock:
            raw = [(t, p) for t, p, _, _ in self.subscriber.messages if t.startswith("spBv1.0/")]
        for topic, payload in raw:
            parts = topic.split("/")
            if parts[1] == "STATE" or parts[2] in ("NCMD", "DCMD"):
                continue  # what the host (this test) sent, some of it garbage on purpose
            assert parts[1] == GROUP and parts[3] == NODE, topic
            device = parts[4] if len(parts) > 4 else None
            out.append((parts[2], device, decode(payload)))
        return out

    def of(self, verb: str, device: str | None = None) -> list[dict[str, Any]]:
        return [p for v, d, p in self.messages() if v == verb and (device is None or d == device)]

    def wait(self, verb: str, count: int = 1, device: str | None = None,
             timeout: float = 15) -> list[dict[str, Any]]:
        return wait_until(lambda: (found := self.of(verb, device)) and len(found) >= count
                          and found, timeout, f"{count} {verb} {device or ''}")


def metric(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in payload["metrics"] if m.get("name") == name)


def check_session_rules(messages: list[tuple[str, str | None, dict[str, Any]]]) -> None:
    """The specification's rules over one subscriber's view of an edge node's traffic."""
    expected_seq = None
    aliases: dict[str, dict[int, dict[str, Any]]] = {}
    born_node = False
    for verb, device, payload in messages:
        if verb == "NDEATH":
            assert "seq" not in payload, "NDEATH carries no seq"
            born_node = False
            expected_seq = None
            continue
        if verb in ("NCMD", "DCMD"):
            continue
        assert "timestamp" in payload, f"{verb} without a payload timestamp"
        if verb == "NBIRTH":
            assert payload["seq"] == 0, "NBIRTH must have seq 0"
            born_node = True
            aliases = {}
        else:
            assert born_node, f"{verb} before NBIRTH"
            assert payload["seq"] == expected_seq, f"{verb} seq {payload['seq']} != {expected_seq}"
        expected_seq = (payload["seq"] + 1) % 256
        if verb in ("NBIRTH", "DBIRTH"):
            for m in payload["metrics"]:
                assert m["name"] and "alias" in m and "datatype" in m and "timestamp" in m
            aliases[device or ""] = {m["alias"]: m for m in payload["metrics"]}
            all_aliases = [a for metrics in aliases.values() for a in metrics]
            assert len(all_aliases) == len(set(all_aliases)), "aliases unique across the node"
        elif verb == "DDATA":
            born = aliases.get(device or "")
            assert born is not None, f"DDATA for {device} before its DBIRTH"
            for m in payload["metrics"]:
                assert "name" not in m, "DATA messages carry aliases only"
                assert m["alias"] in born, f"alias {m['alias']} not in the DBIRTH of {device}"
                assert "timestamp" in m
        elif verb == "DDEATH":
            aliases.pop(device or "", None)


def test_births_then_ddata_by_alias_with_one_seq_and_will_on_sigkill_matching_bdseq(
        mosquitto, boiler, start_agent, tmp_path):
    sub = Subscriber(mosquitto.port, "spBv1.0/#")
    view = SparkplugView(sub)
    agent = start_agent(sparkplug_config(boiler, mosquitto.url, tmp_path))

    nbirth = view.wait("NBIRTH")[0]
    dbirth = view.wait("DBIRTH", device="boiler-1")[0]
    view.wait("DDATA", count=6, device="boiler-1")

    bd_seq = metric(nbirth, "bdSeq")["value"]
    rebirth = metric(nbirth, "Node Control/Rebirth")
    assert rebirth["datatype"] == DATATYPES["Boolean"] and rebirth["value"] is False
    # every metric with name, alias, datatype; units as engUnit; Modbus types kept unless scaled
    by_name = {m["name"]: m for m in dbirth["metrics"]}
    assert set(by_name) == {"temperature", "setpoint", "pressure", "burner_on"}
    assert by_name["temperature"]["datatype"] == DATATYPES["Double"]  # int16 * 0.1
    assert by_name["temperature"]["properties"]["engUnit"]["string_value"] == "Cel"
    assert by_name["setpoint"]["datatype"] == DATATYPES["Int16"]
    assert by_name["pressure"]["datatype"] == DATATYPES["Float"]
    assert by_name["pressure"]["properties"]["engUnit"]["string_value"] == "bar"
    assert by_name["burner_on"]["datatype"] == DATATYPES["Boolean"]

    # report by exception: the constant setpoint and burner are not repeated in DDATA
    alias_names = {m["alias"]: m["name"] for m in dbirth["metrics"]}
    live = [m for p in view.of("DDATA", "boiler-1") for m in p["metrics"]
            if not m.get("is_historical")]
    counts = {name: 0 for name in by_name}
    for m in live:
        counts[alias_names[m["alias"]]] += 1
    # (once at most: a DBIRTH taken before the first poll carries nulls, then the values)
    assert counts["temperature"] >= 3 and counts["setpoint"] <= 1 and counts["burner_on"] <= 1
    setpoint = by_name["setpoint"]
    if "value" in setpoint:  # read before the birth: a negative Int16 in its own width
        assert signed(setpoint["value"], DATATYPES["Int16"]) == -5
    check_session_rules(view.messages())

    agent.stop(signal.SIGKILL)
    ndeath = view.wait("NDEATH", timeout=30)[0]
    assert "seq" not in ndeath
    assert metric(ndeath, "bdSeq")["value"] == bd_seq

    # bdSeq is persisted: the next run's NBIRTH (and will) carries the next one
    start_agent(sparkplug_config(boiler, mosquitto.url, tmp_path), name="agent2")
    second = view.wait("NBIRTH", count=2)[1]
    assert metric(second, "bdSeq")["value"] == (bd_seq + 1) % 256
    check_session_rules(view.messages())
    sub.close()


def ncmd_rebirth() -> bytes:
    """NCMD {metrics: [{name: "Node Control/Rebirth", datatype: Boolean, value: true}]},
    encoded by hand from the specification's field numbers (not with the agent's codec)."""
    name = b"Node Control/Rebirth"
    metric_bytes = b"\x0a" + bytes([len(name)]) + name + b"\x20\x0b" + b"\x70\x01"
    ts = int(time.time() * 1000)
    return _varint_field(1, ts) + b"\x12" + bytes([len(metric_bytes)]) + metric_bytes


def dcmd(name: str, double: float) -> bytes:
    raw = name.encode()
    metric_bytes = (b"\x0a" + bytes([len(raw)]) + raw + b"\x20\x0a" + b"\x69"
                    + struct.pack("<d", double))
    return _varint_field(1, int(time.time() * 1000)) + b"\x12" + bytes([len(metric_bytes)]) \
        + metric_bytes


def dcmd_int16(alias: int, value: int) -> bytes:
    metric_bytes = _varint_field(2, alias) + _varint_field(10, value & 0xFFFF)
    return _varint_field(1, int(time.time() * 1000)) + b"\x12" + bytes([len(metric_bytes)]) \
        + metric_bytes


def _varint_field(number: int, value: int) -> bytes:
    out = bytearray([number << 3])
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_rebirth_on_ncmd_and_dcmd_writes_reach_the_device_through_the_downlink_path(
        mosquitto, boiler, start_agent, tmp_path):
    sub = Subscriber(mosquitto.port, "spBv1.0/#")
    view = SparkplugView(sub)
    agent = start_agent(sparkplug_config(boiler, mosquitto.url, tmp_path))
    first = view.wait("NBIRTH")[0]
    dbirth = view.wait("DBIRTH", device="boiler-1")[0]
    view.wait("DDATA", device="boiler-1")

    # garbage on the command topics is counted and logged, and changes nothing
    sub.client.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", b"\xff\xff\xff not protobuf", qos=0)
    sub.client.publish(f"spBv1.0/{GROUP}/DCMD/{NODE}/boiler-1", b"\x0a\xff", qos=0)
    sub.client.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", ncmd_rebirth(), qos=0)
    again = view.wait("NBIRTH", count=2)[1]
    rejected = [line for line in agent.log_lines() if line.get("event") == "downlink_rejected"]
    assert {(line["reason"], line.get("topic", line.get("device"))) for line in rejected} == {
        ("malformed", f"spBv1.0/{GROUP}/NCMD/{NODE}"), ("malformed", "boiler-1")}
    view.wait("DBIRTH", count=2, device="boiler-1")
    assert again["seq"] == 0
    assert metric(again, "bdSeq")["value"] == metric(first, "bdSeq")["value"]  # same session

    # a write by alias (Int16, negative) and one by name on a non-writable point
    setpoint_alias = metric(dbirth, "setpoint")["alias"]
    unit = boiler.by_name("boiler-1").units[1]
    sub.client.publish(f"spBv1.0/{GROUP}/DCMD/{NODE}/boiler-1", dcmd_int16(setpoint_alias, -42))
    wait_until(lambda: boiler.call(lambda: unit.written.get(1)) == (-42) & 0xFFFF,
               what="the DCMD write in the simulator")
    sub.client.publish(f"spBv1.0/{GROUP}/DCMD/{NODE}/boiler-1", dcmd("temperature", 99.0))
    # the new value comes back as DDATA, by exception
    def setpoint_reported() -> bool:
        return any(m["alias"] == setpoint_alias and signed(m["value"], DATATYPES["Int16"]) == -42
                   for p in view.of("DDATA", "boiler-1") for m in p["metrics"])
    wait_until(setpoint_reported, what="DDATA with the written setpoint")
    assert 0 not in boiler.call(lambda: dict(unit.written)), "a read-only point was written"
    check_session_rules(view.messages())
    sub.close()


def test_data_buffered_during_a_broker_outage_is_replayed_as_historical(
        boiler, start_agent, tmp_path):
    from edge_agent_simulators.broker import Mosquitto

    broker = Mosquitto().start()
    try:
        sub = Subscriber(broker.port, "spBv1.0/#")
        agent = start_agent(sparkplug_config(boiler, broker.url, tmp_path))
        view = SparkplugView(sub)
        view.wait("DDATA", device="boiler-1")
        sub.close()
        broker.stop()
        outage_start = time.time() * 1000
        wait_until(lambda: any(line.get("event") == "mqtt_disconnected"
                               for line in agent.log_lines()), what="the agent notices")
        # a couple of polls happen during the outage, then the broker comes back
        time.sleep(0.6)  # the outage lasts a few polls: a stimulus, not a synchronisation
        outage_end = time.time() * 1000
        broker = Mosquitto(port=broker.port).start()
        sub = Subscriber(broker.port, "spBv1.0/#")
        view = SparkplugView(sub)
        view.wait("NBIRTH")
        historical = wait_until(
            lambda: [m for p in view.of("DDATA", "boiler-1") for m in p["metrics"]
                     if m.get("is_historical")], what="historical DDATA")
        assert all(m["timestamp"] < outage_end + 1000 for m in historical)
        assert any(outage_start <= m["timestamp"] <= outage_end for m in historical)
        # and live data after it is not historical
        wait_until(lambda: any(not m.get("is_historical") and m["timestamp"] > outage_end + 1000
                               for p in view.of("DDATA", "boiler-1") for m in p["metrics"]),
                   what="live DDATA after the replay")
        check_session_rules(view.messages())
        sub.close()
    finally:
        broker.stop()


def test_waits_for_the_primary_host_and_dies_when_it_goes_offline(
        mosquitto, boiler, start_agent, tmp_path):
    host = "scada-1"
    state = f"spBv1.0/STATE/{host}"
    sub = Subscriber(mosquitto.port, "spBv1.0/#")
    view = SparkplugView(sub)
    agent = start_agent(sparkplug_config(boiler, mosquitto.url, tmp_path, primary_host=host))
    wait_until(lambda: any(line.get("event") == "sparkplug_waiting_for_primary_host"
                           for line in agent.log_lines()), what="waiting for the host")
    # another host coming online is not ours
    sub.client.publish("spBv1.0/STATE/other", json.dumps({"online": True, "timestamp": 1}),
                       qos=1, retain=True)
    ts = int(time.time() * 1000)
    sub.client.publish(state, json.dumps({"online": True, "timestamp": ts}), qos=1, retain=True)
    nbirth = view.wait("NBIRTH")[0]
    assert view.of("NBIRTH") == [nbirth]
    view.wait("DDATA", device="boiler-1")

    # an offline STATE older than the last one is ignored
    sub.client.publish(state, json.dumps({"online": False, "timestamp": ts - 1000}), qos=1,
                       retain=True)
    sub.client.publish(state, json.dumps({"online": False, "timestamp": ts + 1}), qos=1,
                       retain=True)
    ndeath = view.wait("NDEATH")[0]
    assert metric(ndeath, "bdSeq")["value"] == metric(nbirth, "bdSeq")["value"]
    assert len(view.of("NDEATH")) == 1
    wait_until(lambda: any(line.get("event") == "sparkplug_waiting_for_primary_host"
                           for line in agent.log_lines()[1:]) and
               sum(line.get("event") == "sparkplug_waiting_for_primary_host"
                   for line in agent.log_lines()) >= 2, what="reconnected, waiting again")
    assert len(view.of("NBIRTH")) == 1
    sub.client.publish(state, json.dumps({"online": True, "timestamp": ts + 2}), qos=1,
                       retain=True)
    second = view.wait("NBIRTH", count=2)[1]
    assert metric(second, "bdSeq")["value"] == (metric(nbirth, "bdSeq")["value"] + 1) % 256
    check_session_rules(view.messages())
    sub.close()


def test_ddeath_when_a_device_stops_answering_dbirth_when_it_is_back_and_ndeath_on_stop(
        mosquitto, boiler, start_agent, tmp_path):
    sub = Subscriber(mosquitto.port, "spBv1.0/#")
    view = SparkplugView(sub)
    config = sparkplug_config(boiler, mosquitto.url, tmp_path)
    config["devices"][0]["timeout"] = 0.2
    agent = start_agent(config)
    nbirth = view.wait("NBIRTH")[0]
    view.wait("DDATA", device="boiler-1")
    unit = boiler.by_name("boiler-1").units[1]
    boiler.call(lambda: setattr(unit.faults, "no_response", 1.0))  # the unit goes silent
    ddeath = view.wait("DDEATH", device="boiler-1")[0]
    assert ddeath["metrics"] == [] and "seq" in ddeath
    boiler.call(lambda: setattr(unit.faults, "no_response", 0.0))
    view.wait("DBIRTH", count=2, device="boiler-1")  # back: born again before its data
    view.wait("DDATA", count=view_count(view, "DDATA") + 1, device="boiler-1")
    assert agent.stop() == 0
    ndeath = view.wait("NDEATH")[0]  # published by the agent itself, before DISCONNECT
    assert metric(ndeath, "bdSeq")["value"] == metric(nbirth, "bdSeq")["value"]
    messages = view.messages()
    assert [v for v, _, _ in messages].count("NDEATH") == 1
    check_session_rules(messages)
    sub.close()


def view_count(view: SparkplugView, verb: str) -> int:
    return len(view.of(verb))


def dcmd_metric(alias: int, field: int, value: int | float | bool, datatype: int | None = None,
                wire: str = "varint") -> bytes:
    """A DCMD with one metric by alias; `field` is the value's field number (10 int_value,
    11 long_value, 13 double_value, 14 boolean_value), encoded by hand."""
    metric = _varint_field(2, alias)
    if datatype is not None:
        metric += _varint_field(4, datatype)
    if wire == "double":
        metric += bytes([field << 3 | 1]) + struct.pack("<d", value)
    else:
        metric += _varint_field(field, int(value))
    return _varint_field(1, int(time.time() * 1000)) + b"\x12" + bytes([len(metric)]) + metric


def test_hostile_dcmd_ncmd_and_state_never_write_a_wrong_value_and_never_raise(
        mosquitto, boiler, start_agent, tmp_path):
    host = "scada-9"
    sub = Subscriber(mosquitto.port, "spBv1.0/#")
    view = SparkplugView(sub)
    agent = start_agent(sparkplug_config(boiler, mosquitto.url, tmp_path, primary_host=host))
    wait_until(lambda: any(line.get("event") == "sparkplug_waiting_for_primary_host"
                           for line in agent.log_lines()), what="subscribed, waiting for STATE")
    state = f"spBv1.0/STATE/{host}"
    hostile_states = [b'{"online": true, "timestamp": 1e999}',
                      b'{"online": true, "timestamp": ' + b"9" * 400 + b"}",
                      b"[" * 100_000, b'{"online": 1, "timestamp": 5}', b"\xff"]
    for payload in hostile_states:
        sub.client.publish(state, payload, qos=1)
    sub.client.publish(state, json.dumps({"online": True, "timestamp": int(time.time() * 1000)}),
                       qos=1)
    dbirth = view.wait("DBIRTH", device="boiler-1")[0]
    alias = metric(dbirth, "setpoint")["alias"]
    unit = boiler.by_name("boiler-1").units[1]
    topic = f"spBv1.0/{GROUP}/DCMD/{NODE}/boiler-1"
    int16 = DATATYPES["Int16"]
    hostile = [
        dcmd_metric(alias, 10, 70000), dcmd_metric(alias, 10, 65543),  # beyond Int16
        dcmd_metric(alias, 11, 1 << 63),  # long_value 2**63
        dcmd_metric(alias, 10, 0x12345678),
        dcmd_metric(alias, 10, 5, datatype=DATATYPES["Int32"]),  # not the born datatype
        dcmd_metric(alias, 14, True),  # a bool for a number
        dcmd_metric(alias, 13, 5.5, wire="double"),  # a double for an Int16
        dcmd_metric(alias, 13, float("nan"), datatype=int16, wire="double"),
        dcmd_metric(alias + 1000, 10, 5),  # no such metric
        b"\x12" * 70_000,  # too large
        b"\x0a\xff",
    ]
    for payload in hostile:
        sub.client.publish(topic, payload, qos=1)
    sub.client.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", b"\x12\x03\x0a\x01", qos=1)
    sub.client.publish(topic, dcmd_metric(alias, 10, 0xFFFFFFF9, datatype=int16))  # Tahu's -7
    wait_until(lambda: boiler.call(lambda: unit.written.get(1)) == (-7) & 0xFFFF,
               what="the good DCMD write after the hostile ones")
    writes = boiler.call(lambda: sum(n for (fc, _, _), n in unit.requests.items()
                                     if fc in (5, 6, 15, 16)))
    assert writes == 1  # none of the hostile ones reached the device
    assert boiler.call(lambda: dict(unit.written)) == {1: (-7) & 0xFFFF}
    assert agent.stop() == 0
    lines = agent.log_lines()
    rejected = [line for line in lines if line.get("event") == "downlink_rejected"]
    refused = [line for line in lines if line.get("event") == "write_refused"]
    assert len(rejected) + len(refused) >= len(hostile) + len(hostile_states)
    assert {line["reason"] for line in rejected} >= {"malformed", "invalid", "too_large",
                                                     "datatype"}
    assert not [line for line in lines if line.get("level") in ("error", "critical")
                or "Traceback" in str(line)]
