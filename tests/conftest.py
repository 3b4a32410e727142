"""Shared fixtures: a real Mosquitto per test, simulators, the agent as a subprocess."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent_simulators.broker import Mosquitto
from tests.helpers import AgentProcess, SimulatorThread, Subscriber


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    broker = Mosquitto().start()
    yield broker
    broker.stop()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto.port)
    yield sub
    sub.close()


@pytest.fixture
def simulators() -> Iterator[SimulatorThread]:
    """The built-in default simulator set (boiler-1 on TCP, meter-1/2 on one RTU pty)."""
    sims = SimulatorThread()
    yield sims
    sims.close()


#: lines of each agent's log printed with a failing test (a flake leaves nothing else behind)
LOG_TAIL_LINES = 60


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator:
    started: list[AgentProcess] = []

    def start(config: dict | Path, env: dict[str, str] | None = None,
              name: str = "agent") -> AgentProcess:
        agent = AgentProcess(config, tmp_path, env, name).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.process and agent.process.poll() is None:
            agent.kill()
    for agent in started:  # printed, pytest shows it only when the test failed
        with contextlib.suppress(OSError):
            tail = agent.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            print(f"--- the last {len(tail)} lines of {agent.log_path.name} ---", *tail, sep="\n")
