"""Broker failover: the URL list is tried in order, and data follows the broker that is up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edge_agent_simulators.broker import Mosquitto, free_port
from tests.delivery_support import agent_config, events, gaps_and_duplicates, modbus_devices
from tests.helpers import SimulatorThread, Subscriber, wait_until


@pytest.fixture
def sims() -> Iterator[SimulatorThread]:
    sims = SimulatorThread(modbus_devices(1, interval=0.05))
    yield sims
    sims.close()


def test_first_broker_down_data_flows_to_the_second_then_back_to_the_first(
        sims, start_agent, tmp_path):
    first, second = Mosquitto(), Mosquitto().start()
    try:
        sub2 = Subscriber(second.port, "edge/+/+/telemetry")
        config = agent_config(sims, [first.url, second.url], tmp_path / "buffer.sqlite3")
        agent = start_agent(config, env={"NODE_NAME": "fo"})

        sub2.wait_for("fo/dev-0/telemetry", 5)
        failed = events(agent, "mqtt_connect_failed")
        assert failed[0]["url"] == first.url and "cannot connect" in failed[0]["error"]
        assert events(agent, "mqtt_connected")[0]["url"] == second.url

        # The second broker goes away while the first is back: the next round starts at the
        # first URL, and nothing is lost across the switch.
        first.start()
        sub1 = Subscriber(first.port, "edge/+/+/telemetry")
        second.kill()
        sub1.wait_for("fo/dev-0/telemetry", 5)
        assert [e["url"] for e in events(agent, "mqtt_connected")][-1] == first.url
        assert agent.stop() == 0

        last = max(m["seq"] for m in sub1.json_on("fo/dev-0/telemetry"))
        seqs = {"dev-0": [m["seq"] for m in sub2.json_on("telemetry") + sub1.json_on("telemetry")]}
        missing, _ = gaps_and_duplicates(seqs, {"dev-0": last})
        assert missing == 0
        sub1.close()
        sub2.close()
    finally:
        first.stop()
        second.stop()


def test_every_broker_down_keeps_retrying_in_order(sims, start_agent, tmp_path):
    urls = [f"mqtt://127.0.0.1:{free_port()}", f"mqtt://127.0.0.1:{free_port()}"]
    config = agent_config(sims, urls, tmp_path / "buffer.sqlite3")
    agent = start_agent({**config, "shutdown_grace": 0.5})
    wait_until(lambda: len(events(agent, "mqtt_connect_failed")) >= 4, what="two rounds")
    assert [e["url"] for e in events(agent, "mqtt_connect_failed")[:4]] == urls + urls
    assert events(agent, "mqtt_retrying")
    assert agent.process.poll() is None
    assert agent.stop() == 0
