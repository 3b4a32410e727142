"""The line driver against simulated instruments on real ptys, in process and through MQTT."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.errors import DeviceTimeout, ProtocolError
from edge_agent_drivers.line.config import LineDevice
from edge_agent_drivers.line.driver import LineDriver
from edge_agent_simulators.line import SICS_PATTERN, CsvSensor, ScaleDevice, SicsScale
from tests.helpers import SimulatorThread, wait_until


def test_scale_weights_reach_mqtt_in_kg_good_when_stable_uncertain_while_swinging(
        mosquitto, subscriber, start_agent):
    sims = SimulatorThread({"devices": [
        {"name": "scale-1", "kind": "scale", "interval": 0.05, "cycle": 2.0},
        {"name": "sensor-1", "kind": "csv-sensor", "interval": 0.05, "noise": 0.2}]})
    try:
        agent = start_agent(sims.agent_config(mosquitto.url, node="n1"))

        def stable_kinds() -> set[tuple[bool, str]]:
            return {(r["value"], r["quality"]) for m in subscriber.json_on("scale-1/telemetry")
                    for r in m["readings"] if r["metric"] == "stable"}
        wait_until(lambda: {(True, "good"), (False, "uncertain")} <= stable_kinds(),
                   timeout=15, what="stable and swinging weights")
        for message in subscriber.json_on("scale-1/telemetry"):
            weight, stable = message["readings"]
            assert weight["metric"] == "weight" and weight["unit"] == "kg"
            assert -0.01 <= weight["value"] <= 30.0
            assert weight["quality"] == ("good" if stable["value"] else "uncertain")
        scale = sims.by_name("scale-1").handle.scale
        answered = len(subscriber.json_on("scale-1/telemetry"))
        assert sims.call(lambda: scale.commands["SI"]) >= answered >= 2

        # the CSV sensor streams through garbage lines; the header is skipped silently
        sensor = sims.by_name("sensor-1").handle
        messages = subscriber.wait_for("sensor-1/telemetry", count=20)
        sent = set(sims.call(lambda: list(sensor.sent)))
        for message in messages:
            readings = message["readings"]
            assert [(r["metric"], r["unit"]) for r in readings] == [
                ("temperature", "Cel"), ("humidity", "%"), ("pressure", "hPa")]
            assert tuple(r["value"] for r in readings) in sent  # nothing made up of noise
        assert sims.call(lambda: sensor.injected["noise"]) > 0
        dropped = wait_until(lambda: [line for line in agent.log_lines()
                                      if line.get("event") == "line_dropped"],
                             what="garbage lines logged")
        assert {line["device"] for line in dropped} == {"sensor-1"}
        assert agent.stop() == 0
    finally:
        sims.close()


def line_device(path: str, **keys) -> LineDevice:
    base = {"name": "scale", "driver": "line", "port": path, "format": "regex",
            "pattern": SICS_PATTERN, "timeout": 0.3,
            "fields": [{"name": "weight", "unit": "kg"}]}
    return LineDevice(**{**base, **keys})


def test_poll_answers_time_out_or_fail_cleanly_and_streaming_mode_is_set_up_by_command():
    async def scenario() -> None:
        device = ScaleDevice(SicsScale(cycle=60.0))  # empty pan, stable, for the first 12 s
        sensor = CsvSensor(rate=50)
        try:
            ok = LineDriver(line_device(device.path, mode="poll", command="SI\r\n"))
            await ok.connect()
            sample = await ok.poll()
            assert sample.readings[0].metric == "weight"
            assert abs(sample.readings[0].value) <= 0.002
            await ok.close()

            unknown = LineDriver(line_device(device.path, mode="poll", command="XYZ\r\n"))
            await unknown.connect()
            with pytest.raises(ProtocolError, match="ES"):  # the scale's syntax error
                await unknown.poll()
            assert unknown.counters["no_match"] == 1
            await unknown.close()

            silent = LineDriver(line_device(sensor.path, mode="poll", command="SI\r\n",
                                            ignore="."))  # a device that never answers
            await silent.connect()
            with pytest.raises(DeviceTimeout):
                await silent.poll()
            await silent.close()

            streamed = LineDriver(line_device(device.path, mode="stream", setup="SIR\r\n"))
            assert streamed.streaming
            await streamed.connect()
            stream = streamed.stream()
            first = await asyncio.wait_for(stream.__anext__(), 5)
            second = await asyncio.wait_for(stream.__anext__(), 5)
            assert first.readings[0].metric == second.readings[0].metric == "weight"
            await stream.aclose()
            await streamed.close()
        finally:
            device.close()
            sensor.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_usb_identity_with_no_matching_port_is_a_disconnected_device_to_retry():
    from edge_agent.errors import DeviceDisconnected

    driver = LineDriver(line_device("usb:0403:6001:NOPE", mode="stream"))
    with pytest.raises(DeviceDisconnected, match="usb:0403:6001"):
        asyncio.run(driver.connect())
