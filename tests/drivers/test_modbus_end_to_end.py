"""Modbus through the whole agent: simulators on ptys and sockets, the agent, Mosquitto.

What a subscriber and an operator see when units on a line misbehave: the neighbours of a
dead unit keep their cadence (judged by the published read timestamps), refused points are
published bad beside good ones, and the causes are counted in /metrics.
"""

from __future__ import annotations

import itertools
import statistics

from tests.helpers import SimulatorThread, wait_until
from tests.inprocess import AgentThread, sample_value


def _sims(spec: dict) -> SimulatorThread:
    return SimulatorThread(spec)


def test_a_dead_unit_on_the_line_delays_its_neighbour_by_no_more_than_its_timeout(
        mosquitto, subscriber, start_agent):
    interval, dead_timeout = 0.2, 0.3
    sims = _sims({"devices": [
        {"name": "meter-1", "kind": "modbus-rtu", "interval": interval, "units": [
            {"unit": 1, "registers": [
                {"name": "voltage", "table": "input", "address": 0, "value": 230.1,
                 "scale": 0.1, "unit": "V"}]}]},
        {"name": "meter-2", "kind": "modbus-rtu", "shares_port_with": "meter-1",
         "interval": interval, "units": [
             {"unit": 2, "faults": {"no_response": 1.0}, "registers": [
                 {"name": "voltage", "table": "input", "address": 0, "value": 2299}]}]}]})
    try:
        config = sims.agent_config(mosquitto.url, node="n1")
        healthy, dead = config["devices"]
        healthy["timeout"] = 0.5
        dead.update(timeout=dead_timeout, retries=3)  # retries would cost 4 x 0.3 s each
        dead_unit = sims.by_name("meter-2").units[2]
        start_agent(config)

        subscriber.wait_for("n1/meter-2/status", where=lambda m: m["state"] == "error")
        asked_before = sims.call(lambda: sum(dead_unit.requests.values()))
        first = len(subscriber.on("n1/meter-1/telemetry"))
        messages = subscriber.wait_for("n1/meter-1/telemetry", count=first + 20)[first:]
        asked = sims.call(lambda: sum(dead_unit.requests.values())) - asked_before

        assert asked >= 2, "the dead unit was not polled while the neighbour was measured"
        stamps = [m["readings"][0]["ts"] for m in messages]
        gaps = [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
        assert max(gaps) < interval + dead_timeout + 0.2, gaps
        assert statistics.median(gaps) < interval + 0.1, gaps
        assert all(m["readings"][0] == {"metric": "voltage", "value": 230.1, "unit": "V",
                                        "ts": m["readings"][0]["ts"], "quality": "good"}
                   for m in messages)
        assert not subscriber.on("n1/meter-2/telemetry")
        status = subscriber.json_on("n1/meter-2/status")[-1]
        assert "no answer" in status["error"]
    finally:
        sims.close()


def test_modbus_ascii_over_a_pty_end_to_end(mosquitto, subscriber, start_agent):
    sims = _sims({"devices": [
        {"name": "flow-1", "kind": "modbus-ascii", "interval": 0.2, "units": [
            {"unit": 7, "registers": [
                {"name": "flow", "address": 0, "type": "float32", "order": "CDAB",
                 "unit": "m3/h", "value": 12.75},
                {"name": "total", "address": 2, "type": "uint64", "order": "DCBA",
                 "value": 1234567890123},
                {"name": "alarm", "table": "coil", "address": 0, "type": "bool",
                 "value": True}]}]}]})
    try:
        config = sims.agent_config(mosquitto.url, node="n2")
        assert config["devices"][0]["framer"] == "ascii"
        start_agent(config)
        (message, *_) = subscriber.wait_for("n2/flow-1/telemetry", count=2)
        readings = {r["metric"]: (r["value"], r["quality"]) for r in message["readings"]}
        assert readings == {"flow": (12.75, "good"), "total": (1234567890123, "good"),
                            "alarm": (True, "good")}
    finally:
        sims.close()


def test_refused_points_are_published_bad_beside_good_ones_and_counted_in_metrics(
        mosquitto, subscriber):
    sims = _sims({"devices": [
        {"name": "plc-1", "kind": "modbus-tcp", "interval": 0.1, "units": [
            {"unit": 1, "faults": {"sparse": True}, "registers": [
                {"name": "level", "address": 0, "value": 42},
                {"name": "setpoint", "address": 1, "value": 40},
                {"name": "mode", "table": "input", "address": 0, "value": 3}]}]}]})
    agent = None
    try:
        config = sims.agent_config(mosquitto.url, node="n3")
        device = config["devices"][0]
        device["points"].append({"name": "ghost", "address": 5})  # no such register
        agent = AgentThread(config).start()

        (message, *_) = subscriber.wait_for("n3/plc-1/telemetry", count=3)
        readings = {r["metric"]: (r["value"], r["quality"]) for r in message["readings"]}
        assert readings == {"level": (42, "good"), "setpoint": (40, "good"),
                            "ghost": (None, "bad"), "mode": (3, "good")}
        assert subscriber.json_on("n3/plc-1/status")[-1]["state"] == "connected"
        wait_until(lambda: (sample_value(agent.metrics(), "edge_agent_read_errors_total",
                                         device="plc-1", kind="exception_02") or 0) >= 3,
                   what="exception_02 counted per poll")
    finally:
        if agent is not None:
            agent.stop()
        sims.close()
