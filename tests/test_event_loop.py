"""The agent's event loop: uvloop's where it is installed (a dependency on Linux)."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.cli import event_loop_factory, run_until_signalled


def test_the_agent_runs_on_uvloop_where_it_is_installed():
    uvloop = pytest.importorskip("uvloop")
    seen = []

    async def agent(stop: asyncio.Event) -> None:
        seen.append(type(asyncio.get_running_loop()))

    assert event_loop_factory() is uvloop.new_event_loop
    run_until_signalled(agent)
    assert seen == [uvloop.Loop]
