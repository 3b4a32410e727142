"""The agent as users run it: a subprocess reading simulators and publishing to Mosquitto."""

from __future__ import annotations

import json
import signal
import time

from tests.helpers import wait_until


def test_readings_arrive_scaled_with_units_rising_seq_and_node_from_env(
        mosquitto, subscriber, simulators, start_agent):
    config = simulators.agent_config(mosquitto.url, node="from-config")
    for device in config["devices"]:
        if device["driver"] == "modbus":  # the meters of other protocols have interval floors
            device["interval"] = 0.2
    started_ms = time.time() * 1000
    agent = start_agent(config, env={"NODE_NAME": "edge/node+1"})
    # `/ +` become `_` in the topic level (the contract)
    node = "edge_node_1"

    boiler = subscriber.wait_for(f"{node}/boiler-1/telemetry", count=5)
    meter2 = subscriber.wait_for(f"{node}/meter-2/telemetry", count=3)

    assert [m["seq"] for m in boiler[:5]] == [1, 2, 3, 4, 5]
    first = boiler[0]
    assert first["node"] == node and first["device"] == "boiler-1"
    readings = {r["metric"]: r for r in first["readings"]}
    # temperature is int16 raw tenths of a degree; sine around 65 +- 8
    assert readings["temperature"]["unit"] == "Cel"
    assert 56.9 <= readings["temperature"]["value"] <= 73.1
    assert round(readings["temperature"]["value"], 1) == readings["temperature"]["value"]
    assert 1.5 <= readings["pressure"]["value"] <= 3.0
    assert readings["running_hours"]["value"] >= 1200  # uint32 in CDAB order
    assert readings["burner_on"]["value"] is True
    assert all(r["quality"] == "good" for r in first["readings"])
    for message in boiler:
        for reading in message["readings"]:
            assert started_ms - 1000 <= reading["ts"] <= time.time() * 1000
    # the second unit on the shared RTU port
    assert meter2[0]["readings"][0]["metric"] == "voltage"
    assert 220 <= meter2[0]["readings"][0]["value"] <= 240

    status = subscriber.wait_for(f"{node}/status", where=lambda m: m["state"] == "online")
    assert status[0]["version"]
    assert agent.stop() == 0


def test_node_status_is_retained_online_and_will_marks_offline_on_sigkill(
        mosquitto, simulators, start_agent):
    from tests.helpers import Subscriber

    agent = start_agent(simulators.agent_config(mosquitto.url), env={"NODE_NAME": "n7"})
    early = Subscriber(mosquitto.port, "edge/n7/status")
    early.wait_for("edge/n7/status", where=lambda m: m["state"] == "online")
    early.close()

    late = Subscriber(mosquitto.port, "edge/n7/status")  # joins after the fact: retained
    wait_until(lambda: any(retained for _, _, _, retained in late.messages), what="retained")
    assert json.loads(late.messages[0][1])["state"] == "online"

    agent.stop(signal.SIGKILL)
    late.wait_for("edge/n7/status", where=lambda m: m["state"] == "offline", timeout=90)
    late.close()
