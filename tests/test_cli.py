"""The CLI's simulate and demo commands, as a newcomer runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import yaml

from edge_agent import cli
from tests.helpers import REPO, Subscriber, run_cli, wait_until


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


def test_ctrl_c_stops_the_demo_quietly_and_its_view_reads_like_the_payloads(tmp_path):
    out_path = tmp_path / "demo.out"
    with out_path.open("w") as out:
        # its own process group, like a terminal's foreground job: Ctrl-C is SIGINT to all
        demo = subprocess.Popen([sys.executable, "-m", "edge_agent", "demo"], stdout=out,
                                stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env=_env_without_config(), start_new_session=True)
        try:
            wait_until(lambda: "gnss_time=" in out_path.read_text()
                       and "weight=" in out_path.read_text(), timeout=30, what="GNSS and scale")
            os.killpg(demo.pid, signal.SIGINT)
            assert demo.wait(30) == 0
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
    text = out_path.read_text()
    assert "warning" not in text and "mqtt_disconnected" not in text and "Traceback" not in text
    assert not re.search(r"=(True|False|None|-0\.00)\b", text)
    assert re.search(r"gnss_time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
    boiler = next(line for line in text.splitlines() if line.startswith("boiler-1"))
    metrics = [part.split("=")[0] for part in boiler.split()[2:] if "=" in part]
    assert metrics == ["temperature", "pressure", "running_hours", "burner_on"]  # as configured


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


def test_check_config_takes_the_file_as_run_does(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"node": "n1"}))
    assert cli.main(["check-config", "-c", str(path)]) == 0
    assert "node: n1" in capsys.readouterr().out
    assert cli.main(["check-config", str(path), "-c", str(path)]) == 2
    assert "name the file once" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "check-config", "scan", "simulate", "demo"])
def test_every_command_explains_itself_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 8, text  # a sentence, not a repeated summary
    assert f"example:\n  edge-agent {command}" in text


def test_simulate_names_its_spec_with_spec_and_keeps_c(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["simulate", "--spec", "s.yaml"]).spec == "s.yaml"
    assert parser.parse_args(["simulate", "-c", "s.yaml"]).spec == "s.yaml"


def test_a_command_whose_distribution_fails_to_import_says_why(tmp_path):
    info = tmp_path / "broken_command-0.1.dist-info"  # installed, but its module is missing
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-command\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edge_agent.commands]\nbroken = nowhere_mod:add\n")
    env = {"PYTHONPATH": str(tmp_path)}
    assert run_cli("scan", env=env).returncode == 0  # the rest of the CLI works
    result = run_cli("broken", env=env)
    assert result.returncode == 1
    assert "command 'broken' failed to load: ModuleNotFoundError" in result.stderr
