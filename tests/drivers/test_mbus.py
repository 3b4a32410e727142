"""The mbus driver: meters on a simulated M-Bus line (a real pty), frames by byte vectors."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.config import validate
from edge_agent.errors import ConfigError, ProtocolError
from edge_agent_drivers.mbus import frames, records
from edge_agent_drivers.mbus.config import MbusDevice
from edge_agent_drivers.mbus.driver import MbusDriver
from edge_agent_simulators.mbus import MbusLine, heat_meter, water_meter
from tests.helpers import SimulatorThread

# ---- frames, by byte vectors ------------------------------------------------------------------


def _frame(raw: bytes) -> frames.Frame:
    reader = frames.FrameReader()
    reader.feed(raw)
    frame = reader.next()
    assert frame is not None
    return frame


def test_short_and_select_frames_are_built_to_the_standard() -> None:
    assert frames.snd_nke(5) == bytes.fromhex("1040054516")
    assert frames.req_ud2(5, fcb=True) == bytes.fromhex("107b058016")
    assert frames.req_ud2(5, fcb=False) == bytes.fromhex("105b056016")
    select = frames.select("1234FFFF")
    assert select[:4] == bytes.fromhex("680b0b68") and select[4:7] == bytes([0x53, 0xFD, 0x52])
    assert select[7:11] == bytes.fromhex("ffff3412")  # BCD, least significant byte first
    parsed = frames.parse_select(_frame(select))
    assert parsed is not None and parsed[0] == "1234FFFF"
    assert frames.matches("1234FFFF", "12345678") and not frames.matches("1234FFFF", "12355678")


def test_the_reader_cuts_frames_from_noise_and_refuses_bad_checksums() -> None:
    reader = frames.FrameReader()
    good = frames.long_frame(0x08, 5, 0x72, bytes(12))
    bad = bytearray(good)
    bad[-2] ^= 0xFF
    reader.feed(b"\x00\x7f" + bytes([frames.ACK]) + bytes(bad) + good)
    assert reader.next().kind == "ack"
    with pytest.raises(frames.FrameError) as error:
        reader.next()
    assert error.value.kind == "checksum"
    assert reader.next().raw == good
    assert reader.next() is None and reader.skipped == 2


def test_records_get_stable_names_and_one_unit_per_name() -> None:
    meter = heat_meter()
    first = _frame(meter.answer(5, True))
    second = _frame(meter.answer(5, False))
    one, two = records.decode(first), records.decode(second)
    assert one.identification == "12345678" and one.more_follow and not two.more_follow
    values = {r.name: (r.value, r.unit) for r in one.records + two.records}
    assert values["energy"][1] == "kW.h" and 12345 <= values["energy"][0] < 13000
    assert values["volume"][1] == "m3" and values["volume"][0] >= 54.321
    assert values["flow_temperature"] == (70.0, "Cel")
    assert values["return_temperature"] == (50.0, "Cel")
    assert values["power"] == (15.0, "kW")
    assert values["volume_flow"] == (0.65, "m3/h")
    assert values["energy_s1"] == (11111.0, "kW.h")
    assert values["energy_t1"] == (2222.0, "kW.h")
    assert values["on_time"] == (4242.0, "h")
    assert "manufacturer_data" not in values
    with_data = records.decode(second, manufacturer_data=True)
    assert {r.name for r in with_data.records} >= {"manufacturer_data"}


# ---- the driver on a simulated line -------------------------------------------------------------


def device(path: str, **keys) -> MbusDevice:
    return MbusDevice(**{"name": "m", "driver": "mbus", "port": path, "timeout": 0.3, **keys})


def test_primary_and_secondary_readouts_with_multi_telegram_fcb_and_a_shared_line() -> None:
    async def scenario() -> None:
        bus = MbusLine([heat_meter(), water_meter()])
        try:
            heat = MbusDriver(device(bus.path, address=5))
            water = MbusDriver(device(bus.path, secondary="87654321",
                                      points=[{"record": "volume", "name": "water_total"}],
                                      all_records=False))
            await heat.connect()
            await water.connect()
            first = await heat.poll()
            again = await heat.poll()
            w = await water.poll()
            await heat.close()
            await water.close()
            names = {r.metric for r in first.readings}
            assert {"energy", "volume", "energy_s1", "energy_t1", "on_time"} <= names
            assert {r.metric for r in again.readings} == names
            assert [r.metric for r in w.readings] == ["water_total"]
            assert w.readings[0].value >= 123.456
            units = {p.name: p.unit for p in heat.points()}
            assert units["energy"] == "kW.h" and units["flow_temperature"] == "Cel"
            assert {p.name: p.unit for p in water.points()} == {"water_total": "m3"}
            meter = bus.meters[0]
            assert meter.requests["req_ud2"] == 4  # two readouts of two telegrams each
            assert bus.events["collision"] == 0
        finally:
            bus.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_checksum_faults_are_retried_and_counted_and_a_collision_is_a_protocol_error() -> None:
    async def scenario() -> None:
        flaky = MbusLine([heat_meter()], faults={"bad_checksum": 0.3})
        # two meters left at the same primary address: a classic commissioning fault
        twins = MbusLine([water_meter(ident=11110001, address=3),
                          water_meter(ident=11110002, address=3)])
        try:
            driver = MbusDriver(device(flaky.path, address=5, retries=5))
            await driver.connect()
            for _ in range(4):
                sample = await driver.poll()
                assert sample.readings
            await driver.close()
            assert flaky.events["bad_checksum"] > 0
            assert driver.errors["checksum"] == flaky.events["bad_checksum"]

            clash = MbusDriver(device(twins.path, secondary="11110001", retries=0))
            await clash.connect()  # exact: only one of the twins answers the select
            assert (await clash.poll()).readings
            both = MbusDriver(device(twins.path, address=3, retries=0))  # both answer at once
            with pytest.raises(ProtocolError, match=r"garbled|checksum|frame"):
                await both.connect()
            await clash.close()
            assert twins.events["collision"] >= 1
        finally:
            flaky.close()
            twins.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_config_needs_exactly_one_address() -> None:
    base = {"name": "m", "driver": "mbus", "port": "/dev/ttyUSB0"}
    with pytest.raises(ConfigError, match="exactly one of address"):
        validate({"devices": [base]})
    with pytest.raises(ConfigError, match="exactly one of address"):
        validate({"devices": [{**base, "address": 1, "secondary": "12345678"}]})
    with pytest.raises(ConfigError, match=r"devices\[0\]\.address"):
        validate({"devices": [{**base, "address": 251}]})


def test_meters_on_one_line_reach_mqtt(mosquitto, subscriber, start_agent) -> None:
    sims = SimulatorThread({"devices": [{"name": "heat-1", "kind": "mbus", "interval": 1}]})
    try:
        config = sims.agent_config(mosquitto.url, node="n1")
        heat = config["devices"][0]
        config["devices"].append({**heat, "name": "water-1", "address": 7})
        agent = start_agent(config)
        heat_messages = subscriber.wait_for("heat-1/telemetry", count=2)
        water_messages = subscriber.wait_for("water-1/telemetry", count=2)
        energy = [r for r in heat_messages[-1]["readings"] if r["metric"] == "energy"]
        assert energy and energy[0]["unit"] == "kW.h" and energy[0]["quality"] == "good"
        volume = [r for r in water_messages[-1]["readings"] if r["metric"] == "volume"]
        assert volume and volume[0]["unit"] == "m3"
        assert agent.stop() == 0
    finally:
        sims.close()


def test_scan_finds_meters_by_primary_sweep_and_by_secondary_search_even_at_one_address():
    from edge_agent_drivers.mbus.driver import discover

    # parity N: this machine's pty driver refuses re-applying parity E when a port is reopened
    async def scenario() -> None:
        bus = MbusLine([heat_meter(), water_meter(),
                        water_meter(ident=11110001, address=3),
                        water_meter(ident=11110002, address=3)])
        loop = asyncio.get_running_loop()
        try:
            primary = await loop.run_in_executor(None, lambda: discover(
                bus.path, addresses=range(0, 10), timeout=0.1, parity="N"))
            by_address = {f.address: f.identification for f in primary}
            assert by_address == {3: "collision", 5: "12345678", 7: "87654321"}
            found = await loop.run_in_executor(None, lambda: discover(
                bus.path, secondary=True, timeout=0.1, parity="N"))
            assert sorted(f.identification for f in found) == [
                "11110001", "11110002", "12345678", "87654321"]
            assert {f.manufacturer for f in found} == {"KAM", "ZRI"}
            requests = sum(m.requests["req_ud2"] for m in bus.meters)
            assert requests < 200  # the search narrows, it does not try every number
        finally:
            bus.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_scan_mbus_prints_each_meter_with_a_config_that_check_config_accepts(tmp_path):
    import subprocess
    import sys

    import yaml

    from edge_agent_simulators.mbus import MbusLine as SimLine

    async def serve(ready, stop) -> None:
        bus = SimLine([heat_meter(), water_meter()])
        ready.append(bus.path)
        while not stop:
            await asyncio.sleep(0.05)
        bus.close()

    import threading

    ready: list[str] = []
    stop: list[bool] = []
    thread = threading.Thread(target=lambda: asyncio.run(serve(ready, stop)), daemon=True)
    thread.start()
    try:
        while not ready:
            thread.join(0.01)
        done = subprocess.run([sys.executable, "-m", "edge_agent", "scan", "--mbus", ready[0],
                               "--secondary"], capture_output=True, text=True, timeout=60)
    finally:
        stop.append(True)
        thread.join(5)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 found" in done.stdout
    assert "id 12345678, manufacturer KAM" in done.stdout
    lines = done.stdout.splitlines()
    start = lines.index("    config:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("      "):
            break
        block.append(line[6:])
    devices = yaml.safe_load("\n".join(block))
    assert devices[0]["driver"] == "mbus" and devices[0]["secondary"] in ("12345678", "87654321")
    path = tmp_path / "found.yaml"
    path.write_text(yaml.safe_dump({"devices": devices}))
    check = subprocess.run([sys.executable, "-m", "edge_agent", "check-config", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
