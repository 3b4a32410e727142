"""HTTP endpoints: /healthz follows the event loop, /readyz the broker, / is for people."""

from __future__ import annotations

import json
import time

import pytest

from edge_agent import runtime
from edge_agent_simulators.broker import free_port
from tests.helpers import wait_until
from tests.inprocess import AgentThread, http_get


@pytest.fixture
def agents():
    started: list[AgentThread] = []

    def start(config: dict, **kwargs) -> AgentThread:
        agent = AgentThread(config, **kwargs).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def test_healthz_is_ok_with_no_device_present_and_readyz_follows_the_broker(mosquitto, agents):
    config = {"mqtt": {"url": mosquitto.url, "reconnect_max": 0.5},
              "devices": [{"name": "absent", "driver": "modbus", "port": "/nonexistent/tty0",
                           "points": [{"name": "x", "address": 0}]}]}
    agent = agents(config)
    wait_until(lambda: agent.get("/readyz")[0] == 200, what="ready once connected")
    assert agent.get("/healthz") == (200, "ok\n")

    mosquitto.stop()
    _, body = wait_until(lambda: (r := agent.get("/readyz"))[0] == 503 and r,
                         what="not ready without a broker")
    assert "not connected to the broker" in body
    assert agent.get("/healthz")[0] == 200  # alive: a broker outage is no reason to restart

    mosquitto.start()
    wait_until(lambda: agent.get("/readyz")[0] == 200, timeout=15, what="ready again")


def test_healthz_fails_while_the_event_loop_is_stuck(mosquitto, agents, monkeypatch):
    monkeypatch.setattr(runtime, "HEALTH_TIMEOUT", 0.3)
    agent = agents({"mqtt": {"url": mosquitto.url}})
    assert agent.get("/healthz")[0] == 200
    agent.loop.call_soon_threadsafe(time.sleep, 1.5)  # a blocking call on the loop
    status, body = agent.get("/healthz")
    assert (status, body) == (503, "event loop not responding\n")
    wait_until(lambda: agent.get("/healthz")[0] == 200, what="healthy after the stall")


def test_status_page_shows_devices_states_last_values_and_escapes_text(
        mosquitto, simulators, agents):
    config = simulators.agent_config(mosquitto.url)
    config["devices"] = [d for d in config["devices"] if d["name"] == "boiler-1"]
    config["devices"][0]["interval"] = 0.1
    config["devices"].append({"name": "gone", "driver": "modbus", "port": "/nonexistent/<b>tty",
                              "points": [{"name": "x", "address": 0}]})
    agent = agents(config)
    runners = agent.agent.supervisor.runners
    wait_until(lambda: runners["boiler-1"].state.readings > 0, what="readings")
    wait_until(lambda: runners["gone"].state.error, what="gone fails")

    status, page = agent.get("/")
    assert status == 200
    assert "<title>edge-agent" in page and "<script" not in page
    assert "boiler-1" in page and 'class="connected">connected' in page
    assert "temperature = " in page and " Cel" in page  # last value with its unit
    assert "running_hours = " in page
    assert 'class="disconnected">disconnected' in page
    assert "cannot open /nonexistent/&lt;b&gt;tty" in page  # the device's last error, escaped
    assert "<b>tty" not in page


def test_unknown_path_is_404(mosquitto, agents):
    agent = agents({"mqtt": {"url": mosquitto.url}})
    status, body = agent.get("/nope")
    assert status == 404 and "/metrics" in body


def test_edge_agent_run_serves_http_on_the_configured_listen_address(mosquitto, start_agent):
    port = free_port()
    process = start_agent({"mqtt": {"url": mosquitto.url}, "node": "http-node",
                           "http": {"listen": f"127.0.0.1:{port}"}})
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _get_or_none(f"{url}/readyz") == 200, timeout=15, what="ready")
    status, text = http_get(f"{url}/metrics")
    assert status == 200
    assert 'edge_agent_info{node="http-node",version=' in text
    listening = [line for line in process.log_lines() if line.get("event") == "http_listening"]
    assert listening and listening[0]["address"] == f"127.0.0.1:{port}"
    assert process.stop() == 0


def test_http_can_be_disabled(mosquitto, start_agent):
    port = free_port()
    process = start_agent({"mqtt": {"url": mosquitto.url},
                           "http": {"listen": f"127.0.0.1:{port}", "enabled": False}})
    wait_until(lambda: any(line.get("event") == "mqtt_connected"
                           for line in process.log_lines()), timeout=15, what="connected")
    assert _get_or_none(f"http://127.0.0.1:{port}/healthz") is None
    assert process.stop() == 0


def _get_or_none(url: str) -> int | None:
    try:
        return http_get(url, timeout=2)[0]
    except OSError:
        return None


def test_status_page_survives_json_in_last_values(mosquitto, agents):
    """A string value with markup and quotes comes out as text."""
    agent = agents({"mqtt": {"url": mosquitto.url}})
    from edge_agent.ops import status_page

    snap = agent.call(agent.agent.snapshot)
    snap["devices"] = [{"name": "d", "driver": "x", "port": None, "state": "error",
                        "error": None, "readings": 1, "errors": {},
                        "last_values": [{"metric": "label", "value": '<i>"x"</i>',
                                         "ts": time.time() * 1000, "quality": "uncertain"}]}]
    page = status_page.render(snap).decode()
    assert "&lt;i&gt;&quot;x&quot;&lt;/i&gt;" in page and "<i>" not in page
    json.dumps(snap)  # the snapshot is plain data


def test_status_page_spells_values_as_the_payloads_do(mosquitto, agents):
    """true/false/null as in the JSON telemetry, never Python's False/None, and no -0.0."""
    agent = agents({"mqtt": {"url": mosquitto.url}})
    from edge_agent.ops import status_page

    snap = agent.call(agent.agent.snapshot)
    now = time.time() * 1000
    snap["devices"] = [{"name": "d", "driver": "x", "port": None, "state": "connected",
                        "error": None, "readings": 3, "errors": {},
                        "last_values": [
                            {"metric": "pump", "value": False, "ts": now, "quality": "good"},
                            {"metric": "level", "value": None, "ts": now, "quality": "bad"},
                            {"metric": "weight", "value": -0.0, "ts": now, "quality": "good"}]}]
    page = status_page.render(snap).decode()
    assert "pump = false" in page and "level = null" in page and "weight = 0.0" in page
    assert "False" not in page and "None" not in page and "-0.0" not in page
