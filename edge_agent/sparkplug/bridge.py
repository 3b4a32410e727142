"""Connects a `SparkplugSession` to the running agent: devices, publisher, downlink writes.

Kept apart from the session so that the session can be driven by tests without an agent,
and the runtime needs one call (`attach`) to switch `mqtt.format: sparkplug` on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_agent.errors import WriteRefused
from edge_agent.model import PointSpec
from edge_agent.sparkplug.session import DeviceView, SparkplugSession, state_path_for

if TYPE_CHECKING:
    from edge_agent.runtime import Agent, DeviceRunner


def attach(agent: Agent, publisher: Any) -> SparkplugSession:
    """Makes `publisher` a Sparkplug edge node for `agent`; call before the publisher runs."""
    config = agent.config
    views: dict[DeviceRunner, DeviceView] = {}

    def devices() -> list[DeviceView]:
        # one view per runner object, so a runner replaced by a reload gets a new view
        current = list(agent.runners.values())
        for gone in views.keys() - set(current):
            del views[gone]
        return [views[r] if r in views else views.setdefault(r, _view(r)) for r in current]

    session = SparkplugSession(
        publisher=publisher,
        group=config.mqtt.sparkplug.group_id,
        node=agent.node,
        devices=devices,
        primary_host=config.mqtt.sparkplug.primary_host,
        state_path=state_path_for(config.buffer.path),
        write=_writer(agent),
        data_qos=config.mqtt.qos,
    )
    session.attach()
    return session


def _view(runner: DeviceRunner) -> DeviceView:
    points: list[PointSpec] = list(runner.points.values())
    types = {p.name: p.value_type for p in points if p.value_type}
    return DeviceView(runner.config.name, points, types, runner.state)


def _writer(agent: Agent) -> Any:
    """DCMD writes take the JSON downlink's path: writable check, type, min/max, unscaling."""

    async def write(device: str, metric: str, value: Any) -> None:
        result = await agent.write(device, metric, value, request_id="sparkplug-dcmd")
        if not result.ok:
            raise WriteRefused(result.error or "write failed")

    return write
