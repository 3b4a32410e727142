"""The iec62056 driver: mode C readouts from a simulated meter's optical port on a real pty."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.config import validate
from edge_agent.errors import ConfigError, DeviceTimeout, ProtocolError
from edge_agent_drivers.iec62056 import codec
from edge_agent_drivers.iec62056.config import Iec62056Device
from edge_agent_drivers.iec62056.driver import Iec62056Driver
from edge_agent_simulators.iec62056 import ElectricityMeter, OpticalPort
from tests.helpers import SimulatorThread, wait_until

# ---- the codec, by byte vectors ---------------------------------------------------------------


def test_bcc_is_the_xor_of_everything_after_stx_through_etx() -> None:
    assert codec.bcc(b"A\x03") == 0x41 ^ 0x03
    message = codec.readout(["1.8.0(0001.500*kWh)"])
    assert message[0] == codec.STX and message[-2] == codec.ETX
    assert message[-1] == codec.bcc(message[1:-1])
    assert codec.parse_readout(message) == [codec.DataSet("1.8.0", "0001.500", "kWh")]


def test_a_flipped_bit_fails_the_bcc_and_a_cut_message_fails_framing() -> None:
    message = bytearray(codec.readout(["1.8.0(0001.500*kWh)"]))
    message[3] ^= 0x01
    with pytest.raises(codec.FrameError) as bad:
        codec.parse_readout(bytes(message))
    assert bad.value.kind == "bcc"
    with pytest.raises(codec.FrameError) as cut:
        codec.parse_readout(codec.readout(["1.8.0(1*kWh)"])[:-2])
    assert cut.value.kind == "framing"


def test_identification_option_select_and_code_forms() -> None:
    ident = codec.parse_identification(b"/ISK5MT174-0001\r\n")
    assert (ident.manufacturer, ident.max_baudrate, ident.ident) == ("ISK", 9600, "MT174-0001")
    assert codec.parse_identification(b"/LGZ4\\2ZMD3104107.B32\r\n").max_baudrate == 4800
    with pytest.raises(codec.FrameError):
        codec.parse_identification(b"garbage\r\n")
    assert codec.option_select(9600) == b"\x06050\r\n"
    assert codec.parse_option_select(b"\x06040\r\n") == 4800
    assert codec.normalise_code("1-0:1.8.0*255") == "1.8.0"
    assert codec.normalise_code("1-0:1.8.0*96") == "1.8.0*96"  # a billing period stays apart
    assert codec.typed_value("0012345.678") == 12345.678
    assert codec.typed_value("24-12-02") == "24-12-02"
    assert codec.convert(1500.0, "W.h", "kW.h") == 1.5
    assert codec.convert(1.0, "V", "kW.h") is None


# ---- the driver against the simulated optical port --------------------------------------------


def device(path: str, **keys) -> Iec62056Device:
    return Iec62056Device(**{"name": "m", "driver": "iec62056", "port": path,
                             "timeout": 0.5, **keys})


def test_readouts_switch_rate_decode_obis_with_units_and_survive_faults() -> None:
    async def scenario() -> None:
        port = OpticalPort(ElectricityMeter(serial_number="87654321"), max_baudrate=9600)
        capped = OpticalPort(ElectricityMeter(), max_baudrate=9600)
        faulty = OpticalPort(ElectricityMeter(), faults={"bad_bcc": 1.0})
        try:
            driver = Iec62056Driver(device(port.path))
            await driver.connect()
            first = await driver.poll()
            second = await driver.poll()  # signs on afresh at 300 baud
            await driver.close()
            assert port.rates == [9600, 9600] and port.events["readouts"] == 2
            values = {r.metric: r for r in second.readings}
            assert values["meter_address"].value == "87654321"
            assert 12.3 <= values["energy_active_import_total"].value < 13.0
            assert 215 <= values["voltage_l1"].value <= 245
            assert {r.quality for r in second.readings} == {"good"}
            assert values["energy_active_import_total"].value >= {
                r.metric: r.value for r in first.readings}["energy_active_import_total"]
            units = {p.name: p.unit for p in driver.points()}
            assert units["energy_active_import_total"] == "kW.h"
            assert units["voltage_l1"] == "V" and units["frequency"] == "Hz"

            slow = Iec62056Driver(device(capped.path, max_baudrate=2400, all_codes=False,
                                         points=[{"obis": "1-0:32.7.0*255", "name": "u1"}]))
            await slow.connect()
            sample = await slow.poll()
            await slow.close()
            assert capped.rates == [2400]
            assert [r.metric for r in sample.readings] == ["u1"]

            broken = Iec62056Driver(device(faulty.path))
            await broken.connect()
            with pytest.raises(ProtocolError, match="BCC"):
                await broken.poll()
            faulty.faults.clear()
            assert (await broken.poll()).readings  # the next readout is fine again
            await broken.close()
        finally:
            for sim in (port, capped, faulty):
                sim.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_silent_meter_times_out_and_a_meter_hears_no_sign_on_at_the_wrong_rate() -> None:
    async def scenario() -> None:
        silent = OpticalPort(ElectricityMeter(), faults={"silence": 1.0})
        wrong = OpticalPort(ElectricityMeter())
        try:
            driver = Iec62056Driver(device(silent.path, timeout=0.3))
            await driver.connect()
            with pytest.raises(DeviceTimeout, match="identification"):
                await driver.poll()
            await driver.close()
            assert silent.events["silent"] == 1

            fast = Iec62056Driver(device(wrong.path, baudrate=9600, timeout=0.3))
            await fast.connect()
            with pytest.raises(DeviceTimeout):
                await fast.poll()
            await fast.close()
            assert wrong.events["ignored"] == 1 and wrong.events["readouts"] == 0
        finally:
            silent.close()
            wrong.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_config_refuses_readouts_more_often_than_meters_allow_and_duplicate_codes() -> None:
    base = {"name": "m", "driver": "iec62056", "port": "/dev/ttyUSB0"}
    with pytest.raises(ConfigError, match=r"devices\[0\]\.interval"):
        validate({"devices": [{**base, "interval": 1}]})
    with pytest.raises(ConfigError, match="listed twice"):
        validate({"devices": [{**base, "points": [
            {"obis": "1.8.0", "name": "a"}, {"obis": "1-0:1.8.0*255", "name": "b"}]}]})


def test_meter_readings_reach_mqtt_with_ucum_units(mosquitto, subscriber, start_agent) -> None:
    sims = SimulatorThread({"devices": [{"name": "meter-e1", "kind": "iec62056",
                                         "interval": 10}]})
    try:
        agent = start_agent(sims.agent_config(mosquitto.url, node="n1"))
        (message,) = subscriber.wait_for("meter-e1/telemetry", count=1)
        readings = {r["metric"]: r for r in message["readings"]}
        assert readings["energy_active_import_total"]["unit"] == "kW.h"
        assert readings["energy_active_import_total"]["quality"] == "good"
        assert readings["voltage_l3"]["unit"] == "V"
        assert readings["meter_address"]["value"] == "12345678"
        wait_until(lambda: sims.call(lambda: sims.by_name("meter-e1").handle.events[
            "readouts"]) == 1, what="one readout counted at the meter")
        assert agent.stop() == 0
    finally:
        sims.close()
