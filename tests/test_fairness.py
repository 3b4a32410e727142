"""A chatty serial device gets its share of the agent and no more (issue #18, item 2).

A CSV sensor on a pty prints as fast as its simulator can (some 1.4 MB/s, 70,000 lines a
second) beside a scale polled every 200 ms, both simulated in this process, the agent a
subprocess of its own. The scale
must keep its poll schedule (its polls are counted and timed at the simulator), the sensor's
excess must be counted (`edge_agent_samples_dropped_total{reason="rate"}`), and the agent's
memory must stay bounded (its peak RSS, from /proc). Before the core limited and sliced
streams, the same run reached 400 MiB within seconds (and kept growing: issue #18 saw 2.3 GiB);
now it stays under 50 MiB, the scale's largest gap ~0.22 s.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edge_agent_simulators.broker import free_port
from tests.helpers import SimulatorThread, wait_until
from tests.inprocess import sample_value, scrape

INTERVAL = 0.2
SPEC = {"devices": [
    {"name": "chatty", "kind": "csv-sensor", "rate": 100_000},
    {"name": "scale", "kind": "scale", "interval": INTERVAL, "mode": "poll"},
]}


@pytest.fixture
def sims():
    sims = SimulatorThread(SPEC)
    yield sims
    sims.close()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_chatty_stream_neither_starves_a_polled_device_nor_exhausts_memory(
        mosquitto, sims, start_agent):
    port = free_port()
    config = sims.agent_config(mosquitto.url, node="fair",
                               http={"listen": f"127.0.0.1:{port}"})
    agent = start_agent(config)
    scale = sims.by_name("scale").handle.scale
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    def dropped() -> float:
        try:
            families = scrape(metrics_url)
        except OSError:
            return 0
        return sample_value(families, "edge_agent_samples_dropped_total", device="chatty",
                            reason="rate") or 0

    # the flood is on: the sensor's excess is being counted
    wait_until(lambda: dropped() > 2000, timeout=30, what="the chatty device's excess")
    start = len(scale.received)
    # then count 25 polls of the scale (5 s at its interval) while the flood goes on
    wait_until(lambda: len(scale.received) - start >= 25, timeout=30, what="25 polls")
    polls = [t for t, command in list(scale.received)[start:] if command == "SI"]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    elapsed = polls[-1] - polls[0]
    assert len(polls) >= 25
    # on schedule: no gap of five intervals, and at least 80 % of the ticks polled
    assert max(gaps) < 5 * INTERVAL, gaps
    assert len(polls) - 1 >= 0.8 * elapsed / INTERVAL, (len(polls), elapsed)
    assert dropped() > 2000
    assert agent.process.poll() is None
    assert peak_rss_mib(agent.process.pid) < 150
    assert agent.stop() == 0
