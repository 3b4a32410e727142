"""USB devices end to end: simulated devices, the agent as a subprocess, Mosquitto, a subscriber.

The agent process finds the simulated devices through env EDGE_AGENT_USB_BACKEND (pyusb's
backend interface) and EDGE_SIMULATORS_USB_SPEC; the test unplugs and replugs a device by removing
and recreating its present-file, which the backend in the agent process sees at its next call.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent_simulators.usb.bus import SimulatedBus
from tests.helpers import run_cli


def test_hid_thermometer_and_bulk_logger_publish_scaled_readings_with_units(
        mosquitto, subscriber, start_agent, tmp_path: Path):
    bus = SimulatedBus(tmp_path / "usb")
    devices = [
        bus.add("th-1", "thermo-hygrometer", serial="TH-0001", temperature=21.5, humidity=40.25)
        | {"interval": 0.1},
        bus.add("logger-1", "bulk-logger", serial="LG-7", voltage=3.75, temperature=-12.3,
                battery_low=True) | {"interval": 0.1},
    ]
    agent = start_agent({"node": "n1", "mqtt": {"url": mosquitto.url},
                         "http": {"enabled": False}, "devices": devices}, env=bus.env)

    th = subscriber.wait_for("n1/th-1/telemetry", count=3)
    logger = subscriber.wait_for("n1/logger-1/telemetry", count=3)

    readings = {r["metric"]: r for r in th[0]["readings"]}
    assert readings["temperature"]["value"] == 21.5 and readings["temperature"]["unit"] == "Cel"
    assert readings["humidity"]["value"] == 40.25 and readings["humidity"]["unit"] == "%"
    assert [m["seq"] for m in th[:3]] == [1, 2, 3]
    logged = {r["metric"]: r["value"] for r in logger[-1]["readings"]}
    assert logged["voltage"] == 3.75 and logged["temperature"] == -12.3
    assert logged["battery_low"] is True and logged["record"] >= 3
    status = subscriber.json_on("n1/th-1/status")
    assert status[-1]["state"] == "connected"
    assert agent.stop() == 0


def test_unplugged_device_is_disconnected_then_reconnected_when_it_returns(
        mosquitto, subscriber, start_agent, tmp_path: Path):
    bus = SimulatedBus(tmp_path / "usb")
    device = bus.add("th-1", "thermo-hygrometer", serial="TH-0001", temperature=19.0)
    device.update(interval=0.1, timeout=0.2)
    agent = start_agent({"node": "n1", "mqtt": {"url": mosquitto.url},
                         "http": {"enabled": False}, "devices": [device]}, env=bus.env)
    subscriber.wait_for("n1/th-1/telemetry", count=2)

    bus.unplug("th-1")
    # (the agent may also have said "disconnected" without an error before the first connect)
    down = subscriber.wait_for("n1/th-1/status",
                               where=lambda m: m["state"] == "disconnected" and m.get("error"))
    assert "1a86:e025 serial TH-0001" in down[0]["error"]
    before = len(subscriber.on("n1/th-1/telemetry"))

    bus.plug("th-1")
    subscriber.wait_for("n1/th-1/status", count=2, where=lambda m: m["state"] == "connected")
    after = subscriber.wait_for("n1/th-1/telemetry", count=before + 2)
    assert after[-1]["readings"][0]["value"] == 19.0
    # seq continues across the reconnect: nothing is renumbered or lost
    seqs = [m["seq"] for m in after]
    assert seqs == list(range(1, len(seqs) + 1))
    assert agent.stop() == 0


def test_check_config_accepts_the_contract_usb_example(tmp_path: Path):
    path = tmp_path / "usb.yaml"
    path.write_text("""
devices:
  - name: th-1
    driver: usb
    vid: 0x1a86
    pid: 0xe025
    serial: optional
    interface: 0
    endpoint: 0x81
    request: "01 80 33 01"
    interval: 1.0
    fields:
      - {name: temperature, offset: 2, type: int16, endian: big, scale: 0.01, unit: Cel}
""")
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "vid: 6790" in result.stdout and "endpoint: 129" in result.stdout


def test_simulate_usb_kind_gives_a_config_and_env_an_agent_reads_through(
        mosquitto, subscriber, start_agent):
    from tests.helpers import SimulatorThread

    sims = SimulatorThread({"devices": [
        {"name": "th-1", "kind": "usb", "model": "thermo-hygrometer", "serial": "TH-9",
         "interval": 0.1, "temperature": 23.25},
        {"name": "logger-1", "kind": "usb", "model": "bulk-logger", "interval": 0.1},
    ]})
    try:
        th = sims.by_name("th-1")
        assert th.where.startswith("usb 1a86:e025 serial TH-9 (agent env: EDGE_AGENT_USB_BACKEND=")
        assert th.device_config["endpoint"] == "0x81"
        env = th.handle.env  # both devices share one simulated bus, one env
        assert sims.by_name("logger-1").handle is None
        assert env["EDGE_SIMULATORS_USB_SPEC"] in th.where
        agent = start_agent(sims.agent_config(mosquitto.url, usb=True, node="n2"), env=env)
        message = subscriber.wait_for("n2/th-1/telemetry")[0]
        assert message["readings"][0] == {**message["readings"][0], "metric": "temperature",
                                          "value": 23.25, "quality": "good"}
        subscriber.wait_for("n2/logger-1/telemetry")
        assert agent.stop() == 0
    finally:
        sims.close()
