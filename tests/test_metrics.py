"""/metrics scraped over HTTP and parsed with prometheus-client's own text parser."""

from __future__ import annotations

import pytest

from edge_agent import __version__
from edge_agent import config as config_mod
from edge_agent.runtime import Agent
from tests.helpers import SimulatorThread, wait_until
from tests.inprocess import AgentThread, sample_value

FAULTY = {"devices": [
    {"name": "good", "kind": "modbus-tcp", "units": [{"unit": 1, "registers": [
        {"name": "level", "address": 0, "type": "uint16", "value": {"counter": {"rate": 5}}}]}]},
    {"name": "refuses", "kind": "modbus-tcp", "units": [{"unit": 1, "faults": {"exception": 4},
     "registers": [{"name": "level", "address": 0, "type": "uint16", "value": 1}]}]},
    {"name": "garbled", "kind": "modbus-rtu", "units": [{"unit": 1, "faults": {"crc_error": 1.0},
     "registers": [{"name": "level", "address": 0, "type": "uint16", "value": 1}]}]},
]}


@pytest.fixture
def faulty_sims():
    sims = SimulatorThread(FAULTY)
    yield sims
    sims.close()


@pytest.fixture
def agent_thread():
    started: list[AgentThread] = []

    def start(config: dict) -> AgentThread:
        agent = AgentThread(config).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def _fast(config: dict, interval: float = 0.1, timeout: float = 0.2) -> dict:
    for device in config["devices"]:
        device.update(interval=interval, timeout=timeout, retries=0)
    return config


def test_metrics_expose_readings_errors_by_kind_histograms_buffer_and_info(
        mosquitto, subscriber, faulty_sims, agent_thread):
    config = _fast(faulty_sims.agent_config(mosquitto.url, node="metrics-node"))
    agent = agent_thread(config)
    subscriber.wait_for("good/telemetry", count=3)
    wait_until(lambda: sample_value(agent.metrics(), "edge_agent_read_errors_total",
                                    device="garbled", kind="protocol"), what="a CRC error")

    families = agent.metrics()
    assert all(name.startswith("edge_agent_") for name in families)
    info = families["edge_agent_info"].samples[0]
    assert info.name == "edge_agent_info"
    assert info.labels == {"node": "metrics-node", "version": __version__}

    published = len(subscriber.json_on("good/telemetry"))
    readings = sample_value(families, "edge_agent_readings_total", device="good")
    assert readings >= published >= 3  # one reading per message for this device
    assert sample_value(families, "edge_agent_polls_total", device="good") >= 3
    # errors by kind: an exception response, and a CRC error
    assert sample_value(families, "edge_agent_read_errors_total", device="refuses",
                        kind="exception_04") >= 1
    assert sample_value(families, "edge_agent_read_errors_total", device="garbled",
                        kind="protocol") >= 1
    assert sample_value(families, "edge_agent_read_errors_total", device="good",
                        kind="protocol") is None

    # device and broker connection state
    assert sample_value(families, "edge_agent_device_connected", device="good") == 1
    assert sample_value(families, "edge_agent_device_state", device="good",
                        state="connected") == 1
    assert sample_value(families, "edge_agent_device_state", device="good",
                        state="error") == 0
    assert sample_value(families, "edge_agent_broker_connected") == 1

    # histograms: poll duration per device, publish latency read -> PUBACK
    polls = sample_value(families, "edge_agent_poll_duration_seconds_count", device="good")
    assert polls >= 3
    assert sample_value(families, "edge_agent_poll_duration_seconds_bucket", device="good",
                        le="+Inf") == polls
    latency_count = sample_value(families, "edge_agent_publish_latency_seconds_count")
    assert latency_count >= 1
    assert 0 < sample_value(families, "edge_agent_publish_latency_seconds_sum") / latency_count < 5

    # the buffer
    assert sample_value(families, "edge_agent_buffer_messages") is not None
    assert sample_value(families, "edge_agent_buffer_bytes") is not None
    assert sample_value(families, "edge_agent_buffer_dropped_total") == 0
    assert sample_value(families, "edge_agent_buffer_degraded") == 0
    assert sample_value(families, "edge_agent_messages_published_total") >= published


def test_buffer_depth_and_broker_state_during_an_outage(mosquitto, simulators, agent_thread):
    config = simulators.agent_config(mosquitto.url)
    config["devices"] = [d for d in config["devices"] if d["name"] == "boiler-1"]
    config["mqtt"]["reconnect_max"] = 0.5
    agent = agent_thread(_fast(config))
    wait_until(lambda: sample_value(agent.metrics(), "edge_agent_broker_connected") == 1,
               what="connected")
    mosquitto.stop()
    wait_until(lambda: sample_value(agent.metrics(), "edge_agent_buffer_messages") >= 5,
               what="messages held in the buffer")
    families = agent.metrics()
    assert sample_value(families, "edge_agent_broker_connected") == 0
    assert sample_value(families, "edge_agent_buffer_bytes") > 0
    mosquitto.start()
    wait_until(lambda: sample_value(agent.metrics(), "edge_agent_buffer_messages") <= 1,
               timeout=15, what="the buffer drains after the outage")


def test_buffer_drops_are_counted_when_max_bytes_is_reached(agent_thread):
    config = {"mqtt": {"url": "mqtt://127.0.0.1:1", "reconnect_max": 60},  # never connects
              "buffer": {"max_bytes": 65536},
              "shutdown_grace": 0}  # nothing can drain: the stop need not wait the default 10 s
    agent = agent_thread(config)
    payload_rows = 400  # ~200 bytes each: well past 64 KiB

    def fill() -> None:
        outbox = agent.agent.delivery.outbox
        for seq in range(1, payload_rows + 1):
            outbox.append("d", seq, "t", b"x" * 200)
        outbox.flush()

    agent.call(fill)
    families = agent.metrics()
    assert sample_value(families, "edge_agent_buffer_dropped_total") > 0
    assert sample_value(families, "edge_agent_buffer_bytes") <= 65536


def test_each_agent_has_its_own_registry(mosquitto):
    config = config_mod.validate({"mqtt": {"url": mosquitto.url}})
    first, second = Agent(config), Agent(config)  # no "duplicated timeseries" error
    assert first.metrics.registry is not second.metrics.registry
    first.metrics.poll_duration.labels("a").observe(0.1)
    assert b'device="a"' not in second.metrics.exposition().split(b"edge_agent_poll")[-1]


def test_downlink_messages_refused_at_the_boundary_are_counted_by_reason(
        mosquitto, subscriber, agent_thread):
    agent = agent_thread({"node": "m1", "mqtt": {"url": mosquitto.url}})
    wait_until(lambda: sample_value(agent.metrics(), "edge_agent_broker_connected") == 1,
               what="connected")
    families = agent.metrics()
    assert sample_value(families, "edge_agent_downlink_rejected_total", reason="malformed") == 0
    for payload in (b"{not json", b'{"value": NaN}', b"[" * 100_000):
        subscriber.client.publish("edge/m1/ghost/set/x", payload, qos=1)
    subscriber.client.publish("edge/m1/ghost/set/x", b'{"value": 1}', qos=1)
    wait_until(lambda: sample_value(agent.metrics(), "edge_agent_downlink_rejected_total",
                                    reason="unknown_device") == 1, what="all four counted")
    families = agent.metrics()
    assert sample_value(families, "edge_agent_downlink_rejected_total", reason="malformed") == 2
    assert sample_value(families, "edge_agent_downlink_rejected_total", reason="too_large") == 1
