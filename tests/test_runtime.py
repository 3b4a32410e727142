"""The runtime's promises: polls on a fixed grid that a slow poll cannot drift or pile up,
and reconnects spaced by exponential backoff with jitter."""

from __future__ import annotations

import itertools
import time

import pytest

from edge_agent.backoff import Backoff
from edge_agent.supervision.device import PHASE_GROUP, poll_phase
from tests.helpers import SimulatorThread, Subscriber, wait_until
from tests.inprocess import AgentThread, sample_value

SLOW = {"devices": [{
    "name": "slow-plc", "kind": "modbus-tcp", "interval": 0.1,
    "units": [{"unit": 1, "faults": {"delay": 0.25},
               "registers": [{"name": "v", "address": 0, "type": "uint16", "value": 7}]}],
}]}


@pytest.fixture
def slow_sims():
    sims = SimulatorThread(SLOW)
    yield sims
    sims.close()


def test_a_slow_poll_skips_ticks_and_stays_on_the_interval_grid(mosquitto, slow_sims):
    config = slow_sims.agent_config(mosquitto.url, node="grid")
    config["devices"][0].update(interval=0.1, timeout=1.0, retries=0)
    watcher = Subscriber(mosquitto.port, "edge/grid/slow-plc/telemetry")
    agent = AgentThread(config).start()
    try:
        messages = watcher.wait_for("slow-plc/telemetry", count=8, timeout=20)
        stamps = [m["readings"][0]["ts"] for m in messages]
        gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]  # after the first
        # each poll takes 250 ms, so it lands on a later 100 ms tick (every third one on an
        # idle machine): never back to back (no pile-up of the missed ticks), and always on
        # the grid (no drift)
        ticks = [round(gap / 100) for gap in gaps]
        assert all(k >= 3 for k in ticks), gaps
        assert all(abs((ts - stamps[1] + 50) % 100 - 50) <= 30 for ts in stamps[1:]), stamps
        skipped = sample_value(agent.metrics(), "edge_agent_poll_ticks_skipped_total",
                               device="slow-plc")
        assert skipped >= 2 * (len(stamps) - 2)
    finally:
        agent.stop()
        watcher.close()


def test_an_unreachable_device_is_retried_at_growing_intervals(mosquitto):
    from edge_agent_simulators.broker import free_port

    port = free_port()  # nothing listens here
    config = {"node": "retry", "mqtt": {"url": mosquitto.url},
              "devices": [{"name": "gone", "driver": "modbus", "port": f"tcp://127.0.0.1:{port}",
                           "interval": 0.1, "timeout": 0.2,
                           "points": [{"name": "v", "address": 0}]}]}
    agent = AgentThread(config).start()
    try:
        attempts: list[float] = []  # when each failed connect was counted

        def five_attempts() -> bool:
            count = agent.call(
                lambda: sum(agent.agent.supervisor.runners["gone"].state.errors.values()))
            while len(attempts) < count:
                attempts.append(time.monotonic())
            return count >= 5
        wait_until(five_attempts, timeout=20, what="five failed connects", interval=0.005)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        # backoff from 0.1 s doubling with jitter in [ceiling/2, ceiling]: 0.05-0.1, ...,
        # 0.4-0.8 s; the fourth wait is always longer than the first
        assert gaps[3] > gaps[0] and gaps[3] >= 0.3, gaps
        state = agent.call(lambda: agent.agent.supervisor.runners["gone"].state.state)
        assert state == "disconnected"
    finally:
        agent.stop()


def test_backoff_doubles_with_jitter_up_to_its_ceiling_and_resets():
    backoff = Backoff(initial=0.5, maximum=4.0)
    delays = [backoff.next() for _ in range(7)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert len({round(d, 6) for d in delays[3:]}) > 1  # jitter: not the same every time
    backoff.reset()
    assert 0.25 <= backoff.next() <= 0.5


def test_devices_of_one_interval_poll_in_groups_spread_over_it():
    assert {poll_phase(i, 10) for i in range(10)} == {0.0}
    phases = [poll_phase(i, 3 * PHASE_GROUP) for i in range(3 * PHASE_GROUP)]
    assert sorted(set(phases)) == [0.0, 1 / 3, 2 / 3]
    assert all(phases.count(p) == PHASE_GROUP for p in set(phases))
