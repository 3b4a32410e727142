"""The CLI's simulate and demo commands, as a newcomer runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import yaml

from tests.helpers import REPO, Subscriber, run_cli


def _env_without_config() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_CONFIG"] = "/nonexistent/edge-agent.yaml"
    return env


def test_simulate_prints_endpoints_and_a_config_that_check_config_accepts(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "edge_agent", "simulate"],
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        lines = []
        for line in process.stdout:
            if not line.strip() and any(x.startswith("devices:") for x in lines):
                break
            lines.append(line)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    endpoints = [line for line in lines if line.startswith("# ") and ": " in line]
    assert any("boiler-1: tcp://127.0.0.1:" in line for line in endpoints)
    assert any("meter-1: /dev/pts/" in line for line in endpoints)
    assert any(line.startswith("# thermo-1: usb 1a86:e025") for line in endpoints)
    assert any(line.startswith("# the agent needs this environment: EDGE_AGENT_USB_BACKEND=")
               for line in lines)
    config = yaml.safe_load("".join(line for line in lines if not line.startswith("#")))
    names = [d["name"] for d in config["devices"]]
    assert {"boiler-1", "meter-1", "meter-2", "heat-1", "elec-1", "truck-1"} <= set(names)
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run_cli("check-config", str(path)).returncode == 0


def _demo_output(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "edge_agent", "demo", "--duration", "5", *args],
                            capture_output=True, text=True, timeout=60, cwd=REPO,
                            env=_env_without_config())
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_starts_mosquitto_and_shows_live_readings():
    out = _demo_output()
    assert "started mosquitto on mqtt://127.0.0.1:" in out
    assert any(line.startswith("boiler-1") and "temperature=" in line and "Cel" in line
               for line in out.splitlines())
    assert any(line.startswith("meter-2") and "voltage=" in line for line in out.splitlines())
    # the simulated USB thermometer, reached through the pyusb backend the demo sets up
    assert any(line.startswith("thermo-1") and "humidity=" in line for line in out.splitlines())
    # the meters and the CAN adapter of the built-in set
    assert any(line.startswith("heat-1") and "energy=" in line for line in out.splitlines())
    assert any(line.startswith("elec-1") and "voltage_l1=" in line for line in out.splitlines())
    assert any(line.startswith("truck-1") and "CoolantTemp=" in line for line in out.splitlines())


def test_demo_falls_back_to_its_embedded_broker():
    out = _demo_output("--broker", "embedded")
    assert "started the embedded broker" in out
    assert any(line.startswith("boiler-1") for line in out.splitlines())


def test_demo_uses_the_configured_broker(tmp_path, mosquitto):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"mqtt": {"url": mosquitto.url}}))
    watcher = Subscriber(mosquitto.port, "edge/+/boiler-1/telemetry")
    try:
        out = _demo_output("-c", str(path))
        assert "started" not in out
        assert watcher.on("/boiler-1/telemetry"), "telemetry did not reach the configured broker"
    finally:
        watcher.close()
