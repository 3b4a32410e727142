"""The HTTP port is the agent's voice to the kubelet (issue #18, item 12): an agent that
cannot take it must not run while another process answers the probes in its place.

At start-up a taken port stops the agent at once: exit 1, one line naming the address, no
traceback, and nothing started (no broker connection). A reload to a taken port keeps the
running listener and reports the refusal (`edge_agent_config_last_reload_success` 0); a
later reload, once the port is free, moves the listener.
"""

from __future__ import annotations

import asyncio
import socket

import yaml

from edge_agent_simulators.broker import free_port
from tests.helpers import run_cli
from tests.inprocess import AgentThread, http_get, sample_value


def hold_port() -> socket.socket:
    """A listening socket of another process's kind on a free port."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def test_a_taken_port_stops_the_agent_at_start_up_with_one_line(mosquitto, tmp_path):
    with hold_port() as holder:
        port = holder.getsockname()[1]
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"mqtt": {"url": mosquitto.url},
                                        "http": {"listen": f"127.0.0.1:{port}"}}))
        result = run_cli("run", "-c", str(path), timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"edge-agent: cannot listen on 127.0.0.1:{port} (http.listen): "
                     "Address already in use"], result.stderr
    assert "Traceback" not in result.stdout
    # it failed before anything else started: it never connected to the broker
    assert "mqtt_connected" not in result.stdout
    assert '"http_failed"' in result.stdout  # and said so in its structured log


def test_a_reload_to_a_taken_port_keeps_the_running_listener(mosquitto, tmp_path):
    path = tmp_path / "config.yaml"
    config = {"mqtt": {"url": mosquitto.url}}
    agent = AgentThread(config, config_path=path).start()
    try:
        before = agent.url("/healthz")

        def reload() -> bool:
            return asyncio.run_coroutine_threadsafe(agent.agent.reload("test"),
                                                    agent.loop).result(30)

        with hold_port() as holder:
            taken = holder.getsockname()[1]
            path.write_text(yaml.safe_dump({**config, "http": {"listen": f"127.0.0.1:{taken}"}}))
            assert reload() is False
            assert http_get(before)[0] == 200  # the old listener still answers
            stats = agent.call(lambda: dict(agent.agent.reload_stats))
            assert stats["last_error"] == (f"cannot listen on 127.0.0.1:{taken} (http.listen): "
                                           "Address already in use")
            families = agent.metrics()
            assert sample_value(families, "edge_agent_config_last_reload_success") == 0
            assert sample_value(families, "edge_agent_config_reload_failures_total") == 1

        # the same file again, the port now free: the listener moves there
        free = free_port()
        path.write_text(yaml.safe_dump({**config, "http": {"listen": f"127.0.0.1:{free}"}}))
        assert reload() is True
        assert agent.agent.http.port == free
        assert http_get(f"http://127.0.0.1:{free}/healthz")[0] == 200
        assert sample_value(agent.metrics(), "edge_agent_config_last_reload_success") == 1

        # a new address on the port the agent holds itself: let go of it, then take it
        path.write_text(yaml.safe_dump({**config, "http": {"listen": f"0.0.0.0:{free}"}}))
        assert reload() is True
        assert agent.agent.http.address == f"0.0.0.0:{free}"
        assert http_get(f"http://127.0.0.1:{free}/healthz")[0] == 200
    finally:
        agent.stop()
