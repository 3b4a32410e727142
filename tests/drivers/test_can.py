"""The can driver: an slcan adapter simulated on a real pty, python-can's virtual bus, a DBC."""

from __future__ import annotations

import asyncio

import can
import pytest

from edge_agent.config import validate
from edge_agent.errors import ConfigError, DeviceDisconnected
from edge_agent_drivers.can.config import CanDevice
from edge_agent_drivers.can.driver import CanDriver
from edge_agent_simulators.can.slcan import DEFAULT_DBC, SlcanAdapter
from tests.helpers import SimulatorThread


def device(**keys) -> CanDevice:
    return CanDevice(**{"name": "bus", "driver": "can", "dbc": DEFAULT_DBC, **keys})


async def collect(driver: CanDriver, count: int) -> list:
    stream = driver.stream()
    samples = [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(count)]
    await stream.aclose()
    return samples


def test_slcan_frames_decode_to_signals_with_units_and_noise_is_counted_not_fatal() -> None:
    async def scenario() -> None:
        adapter = SlcanAdapter(period=0.02, faults={"noise": 0.2, "bad_length": 0.1})
        try:
            driver = CanDriver(device(interface="slcan", channel=adapter.path,
                                      bitrate=500_000, open_delay=0))
            await driver.connect()
            samples = await collect(driver, 30)
            await driver.close()
            assert adapter.bitrate == 500_000 and adapter.counts["O"] >= 1
            metrics = {r.metric for s in samples for r in s.readings}
            assert {"EngineSpeed", "CoolantTemp", "Speed", "WheelBasedVehicleSpeed"} <= metrics
            units = {p.name: p.unit for p in driver.points()}
            assert units["EngineSpeed"] == "/min" and units["CoolantTemp"] == "Cel"
            assert units["Speed"] == "km/h" and units["OilPressure"] == "bar"
            sent = {name for _, values in adapter.sent for name in values}
            assert metrics <= sent  # nothing made up of the noise
            for sample in samples:
                for reading in sample.readings:
                    assert reading.quality == "good"
            assert adapter.counts["noise"] > 0 and adapter.counts["bad_length"] > 0
            assert driver.errors["garbage"] > 0 and driver.errors["decode"] > 0
        finally:
            adapter.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_message_filter_decodes_only_this_devices_frames_and_an_unplug_ends_the_stream():
    async def scenario() -> None:
        adapter = SlcanAdapter(period=0.02)
        driver = CanDriver(device(interface="slcan", channel=adapter.path, open_delay=0,
                                  messages=["VehicleSpeed"],
                                  points=[{"signal": "Speed", "name": "speed"}]))
        try:
            await driver.connect()
            samples = await collect(driver, 5)
            assert {r.metric for s in samples for r in s.readings} == {"speed"}
            stream = driver.stream()
            adapter.close()  # the adapter is unplugged
            with pytest.raises(DeviceDisconnected):
                while True:
                    await asyncio.wait_for(stream.__anext__(), 5)
        finally:
            await driver.close()
            adapter.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_error_frames_and_bus_off_are_counted_and_out_of_range_signals_are_bad() -> None:
    async def scenario() -> None:
        driver = CanDriver(device(interface="virtual", channel="test-errors"))
        await driver.connect()
        other = can.Bus(interface="virtual", channel="test-errors")
        try:
            other.send(can.Message(arbitration_id=0x004, is_error_frame=True, dlc=8,
                                   data=bytes(8)))
            other.send(can.Message(arbitration_id=0x040, is_error_frame=True, dlc=8,
                                   data=bytes(8)))
            # EngineSpeed raw 0xFFFF * 0.25 = 16383.75 rpm, past the DBC's 8000
            other.send(can.Message(arbitration_id=256, is_extended_id=False,
                                   data=bytes([0xFF, 0xFF, 100, 50, 0, 1, 0, 0])))
            (sample,) = await collect(driver, 1)
            readings = {r.metric: r for r in sample.readings}
            assert readings["EngineSpeed"].quality == "bad"
            assert readings["CoolantTemp"].value == 60 and readings["CoolantTemp"].quality == "good"
            assert driver.errors["error_frame"] == 1 and driver.errors["bus_off"] == 1
            assert driver.errors["range"] == 1
        finally:
            other.shutdown()
            await driver.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_config_names_a_missing_dbc_and_an_unknown_message(tmp_path) -> None:
    base = {"name": "c", "driver": "can", "interface": "virtual", "channel": "x"}
    with pytest.raises(ConfigError, match=r"devices\[0\].*no such file"):
        validate({"devices": [{**base, "dbc": str(tmp_path / "none.dbc")}]})
    with pytest.raises(ConfigError, match="'Nope' is not a message"):
        validate({"devices": [{**base, "dbc": DEFAULT_DBC, "messages": ["Nope"]}]})
    bad = tmp_path / "bad.dbc"
    bad.write_text("BO_ this is not a dbc")
    with pytest.raises(ConfigError, match="not a readable DBC"):
        validate({"devices": [{**base, "dbc": str(bad)}]})


def test_can_signals_reach_mqtt(mosquitto, subscriber, start_agent) -> None:
    sims = SimulatorThread({"devices": [{"name": "truck-1", "kind": "slcan", "period": 0.05}]})
    try:
        agent = start_agent(sims.agent_config(mosquitto.url, node="n1"))
        messages = subscriber.wait_for("truck-1/telemetry", count=3)
        readings = {r["metric"]: r for m in messages for r in m["readings"]}
        assert readings["CoolantTemp"]["unit"] == "Cel"
        assert -40 <= readings["CoolantTemp"]["value"] <= 150
        assert [m["seq"] for m in messages] == sorted(m["seq"] for m in messages)
        assert agent.stop() == 0
    finally:
        sims.close()
