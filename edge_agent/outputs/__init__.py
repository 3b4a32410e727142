"""Wire formats (`mqtt.format`): each one an `Output` (see `edge_agent.outputs.base`).

The format is chosen once, here, from the config; nothing else in the agent asks which one
runs. A new format is a module with a class that follows `Output`, one line in `FORMATS`,
and its name in the config's `mqtt.format` list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.outputs.base import DeviceDirectory, NodeFacts, Output, OutputFactory
from edge_agent.transport.base import Link

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig


def _json(config: AgentConfig, node: str, devices: DeviceDirectory, link: Link,
          facts: NodeFacts | None = None) -> Output:
    from edge_agent.outputs.json import JsonOutput

    return JsonOutput(config, node, devices, link, facts)


def _sparkplug(config: AgentConfig, node: str, devices: DeviceDirectory, link: Link,
               facts: NodeFacts | None = None) -> Output:
    # imported on use: protobuf is loaded only by agents that speak Sparkplug
    from edge_agent.outputs.sparkplug.output import create

    return create(config, node, devices, link, facts)


FORMATS: dict[str, OutputFactory] = {"json": _json, "sparkplug": _sparkplug}


def create(config: AgentConfig, node: str, devices: DeviceDirectory, link: Link,
           facts: NodeFacts | None = None) -> Output:
    """The output of `config.mqtt.format` for `node`, publishing through `link`; `facts`
    is what the node status says of the agent besides its devices (fleet, conflicts)."""
    return FORMATS[config.mqtt.format](config, node, devices, link, facts)
