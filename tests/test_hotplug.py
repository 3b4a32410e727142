"""Hotplug: a serial device whose port vanishes and comes back under the same by-id path.

The 'by-id path' is a symlink in tmp_path to the simulator's current pty, as udev keeps
/dev/serial/by-id/... pointing at whichever ttyUSBn the adapter got this time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge_agent.supervision import device as supervision
from edge_agent_simulators.modbus import PtyEndpoint
from tests.helpers import SimulatorThread, wait_until
from tests.inprocess import AgentThread

SPEC = {"devices": [{"name": "meter", "kind": "modbus-rtu", "interval": 0.1, "units": [
    {"unit": 1, "registers": [{"name": "volts", "table": "input", "address": 0,
                               "type": "uint16", "value": 230}]}]}]}


@pytest.fixture
def meter():
    sims = SimulatorThread(SPEC)
    yield sims
    sims.close()


def _point_link(link: Path, target: str) -> None:
    temporary = link.with_suffix(".new")
    os.symlink(target, temporary)
    os.replace(temporary, link)  # atomic, as udev does it


def _config(sims: SimulatorThread, broker_url: str, port: Path) -> dict:
    config = sims.agent_config(broker_url)
    config["devices"][0].update(port=str(port), timeout=0.3, retries=0)
    return config


def test_unplugged_device_goes_disconnected_and_comes_back_by_itself(
        mosquitto, subscriber, meter, start_agent, tmp_path):
    running = meter.by_name("meter")
    by_id = tmp_path / "usb-FTDI_meter-if00-port0"
    _point_link(by_id, running.handle.path)
    agent = start_agent(_config(meter, mosquitto.url, by_id), env={"NODE_NAME": "n1"})
    subscriber.wait_for("n1/meter/telemetry", count=2)

    # unplug: the pty and the by-id link disappear
    meter.call(running.handle.close)
    by_id.unlink()
    subscriber.wait_for("n1/meter/status", where=lambda m: m["state"] == "disconnected")
    before = len(subscriber.json_on("n1/meter/telemetry"))

    # replug: a new pty (a new /dev/pts/N), the same by-id path
    simulator = running.handle.simulator
    running.handle = meter.call(lambda: PtyEndpoint(simulator))
    unplugged_at = time.monotonic()
    _point_link(by_id, running.handle.path)
    subscriber.wait_for("n1/meter/status", where=lambda m: m["state"] == "connected", count=2,
                        timeout=supervision.RECONNECT_MAX_DELAY + 5)
    after = subscriber.wait_for("n1/meter/telemetry", count=before + 2)
    assert time.monotonic() - unplugged_at < supervision.RECONNECT_MAX_DELAY + 5
    seqs = [m["seq"] for m in after]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap across the replug
    assert agent.stop() == 0


def test_a_port_added_event_wakes_a_waiting_device_at_once(
        mosquitto, meter, tmp_path, monkeypatch):
    # A backoff so long that only the wake-up can explain a quick reconnect.
    monkeypatch.setattr(supervision, "RECONNECT_INITIAL_DELAY", 60.0)
    monkeypatch.setattr(supervision, "RECONNECT_MAX_DELAY", 60.0)
    by_id = tmp_path / "usb-meter"
    config = _config(meter, mosquitto.url, by_id)
    config["devices"][0]["interval"] = 60.0  # the first retry would be 30..60 s away
    agent = AgentThread(config).start()
    try:
        runner = agent.agent.supervisor.runners["meter"]
        wait_until(lambda: runner.state.state == "disconnected" and runner.state.error,
                   what="the absent port is reported")
        assert runner.state.error.startswith("cannot open")
        _point_link(by_id, meter.by_name("meter").handle.path)
        plugged = time.monotonic()
        agent.call(agent.agent.supervisor.on_port_added)  # what a udev 'add' event calls
        wait_until(lambda: runner.state.state == "connected", timeout=5, what="reconnected")
        assert time.monotonic() - plugged < 5
    finally:
        agent.stop()


def test_device_reconnect_backoff_is_capped_for_quick_replug():
    assert supervision.RECONNECT_MAX_DELAY <= 5.0
