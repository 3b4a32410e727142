"""`mqtt.format: sparkplug` from the agent's config: one `SparkplugSession` as the `Output`.

Kept apart from the session so that the session can be driven by tests without a config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.outputs.base import DeviceDirectory, NodeFacts
from edge_agent.outputs.json import JsonTopics
from edge_agent.outputs.sparkplug.session import SparkplugSession, state_path_for
from edge_agent.transport.base import Link

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig


def create(config: AgentConfig, node: str, devices: DeviceDirectory,
           link: Link, facts: NodeFacts | None = None) -> SparkplugSession:
    mqtt = config.mqtt
    return SparkplugSession(
        link=link,
        group=mqtt.sparkplug.group_id,
        node=node,
        devices=devices,
        telemetry_topics=JsonTopics(mqtt.topic_prefix, node),
        primary_host=mqtt.sparkplug.primary_host,
        state_path=state_path_for(config.buffer.path),
        data_qos=mqtt.qos,
        facts=facts,
        claim_topic=f"{mqtt.topic_prefix}/{node}/instance",
    )
