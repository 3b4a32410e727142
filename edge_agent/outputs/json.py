"""`mqtt.format: json`: topic names and JSON payloads as fixed by the contract.

`JsonTopics` names the topics and builds the payloads; `JsonOutput` is the format's `Output`:
telemetry rows are published as stored, statuses are retained, and writes arrive on
`<prefix>/<node>/<device>/set/<metric>` and are answered on `.../set/<metric>/result`.
The telemetry payload is also what every format stores in the outbox (format-neutral rows).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from edge_agent import __version__
from edge_agent.downlink import RETAINED_COMMAND, WriteRequest, WriteResult
from edge_agent.inbound import BadPayload, parse_set, safe_id
from edge_agent.model import now_ms
from edge_agent.outbox import Row
from edge_agent.outputs.base import DeviceDirectory, DeviceView, NodeFacts, ReadingDict
from edge_agent.transport.base import Link, Message

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

#: the last status of a device a reload took off this node (moved to another, or deleted)
REMOVED = "stopped: no longer in this node's config (not this node's device)"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class JsonTopics:
    def __init__(self, prefix: str, node: str) -> None:
        self.prefix, self.node = prefix, node
        self.node_status = f"{prefix}/{node}/status"

    def device_base(self, device: str) -> str:
        return f"{self.prefix}/{self.node}/{device}"

    def telemetry(self, device: str) -> str:
        return f"{self.prefix}/{self.node}/{device}/telemetry"

    def device_status(self, device: str) -> str:
        return f"{self.prefix}/{self.node}/{device}/status"

    def set_filter(self) -> str:
        return f"{self.prefix}/{self.node}/+/set/+"

    def telemetry_payload(self, device: str, seq: int, readings: list[dict[str, Any]]) -> bytes:
        # orjson: the telemetry encoder runs once per poll over every reading; the standard
        # library's takes ~45 us for a 50-reading poll, orjson ~5 us. Non-finite floats never
        # get here (the normaliser publishes them as null with quality bad).
        return orjson.dumps({"node": self.node, "device": device, "seq": seq,
                             "readings": readings})

    def node_status_payload(self, state: str, devices: list[str] | None = None,
                            **fields: Any) -> bytes:
        """The node's status (`online` / `offline`): the one place its payload is built.
        `devices` (the names it runs) and `fields` (config hash, instance, conflict: see
        `edge_agent.conflict`) let a subscriber list the fleet."""
        body: dict[str, Any] = {"state": state, "version": __version__}
        if devices is not None:
            body["devices"] = devices
        body.update(fields)
        body["ts"] = now_ms()
        return _dumps(body).encode()

    @staticmethod
    def device_status_payload(state: str, error: str | None = None) -> bytes:
        body: dict[str, Any] = {"state": state, "ts": now_ms()}
        if error:
            body["error"] = error
        return _dumps(body).encode()


def dumps(value: Any) -> bytes:
    return _dumps(value).encode()


class JsonOutput:
    """The contract's JSON format (see `edge_agent.outputs.base.Output`)."""

    def __init__(self, config: AgentConfig, node: str, devices: DeviceDirectory,
                 link: Link, facts: NodeFacts | None = None) -> None:
        self.topics = JsonTopics(config.mqtt.topic_prefix, node)
        self.devices, self.link, self.facts = devices, link, facts
        self.qos = config.mqtt.qos
        self._telemetry_topics: dict[str, str] = {}
        self._base = f"{self.topics.prefix}/{node}/"

    # -- delivery ------------------------------------------------------------------------
    def will(self) -> Message:
        return self._node_status("offline")

    def subscriptions(self) -> Sequence[str]:
        # its own status too: another agent writing there is a node name conflict
        if self.facts is None:
            return (self.topics.set_filter(),)
        return (self.topics.set_filter(), self.topics.node_status)

    def on_connected(self) -> None:
        self.link.publish_now(self._node_status("online"))
        for device in self.devices.views():
            self.device_status(device)

    def ready(self) -> bool:
        return True

    def telemetry(self, device: str, seq: int, readings: list[ReadingDict]) -> tuple[str, bytes]:
        topic = self._telemetry_topics.get(device)
        if topic is None:
            topic = self._telemetry_topics[device] = self.topics.telemetry(device)
        return topic, self.topics.telemetry_payload(device, seq, readings)

    def encode(self, row: Row) -> Message:
        return Message(row.topic, row.payload, self.qos)

    def shutdown(self) -> Message:
        return self._node_status("offline")

    def node_changed(self) -> None:
        if self.link.is_connected():
            self.link.publish_now(self._node_status("online"))

    def _node_status(self, state: str) -> Message:
        devices = [device.name for device in self.devices.views()]
        fields = self.facts.status_fields() if self.facts is not None else {}
        return Message(self.topics.node_status,
                       self.topics.node_status_payload(state, devices, **fields),
                       qos=1, retain=True)

    # -- devices -------------------------------------------------------------------------
    def device_status(self, device: DeviceView) -> None:
        self.link.publish_state(self.topics.device_status(device.name),
                                self.topics.device_status_payload(device.status, device.error))

    def device_stopped(self, name: str, removed: bool) -> None:
        if removed:  # said once to who listens; then the retained status is cleared, or it
            # would claim the device still exists on this node (it may run on another now)
            topic = self.topics.device_status(name)
            self.link.publish_state(topic, self.topics.device_status_payload(
                "disconnected", REMOVED))
            self.link.publish_state(topic, b"")

    # -- downlink ------------------------------------------------------------------------
    def command(self, topic: str, payload: bytes, retained: bool) -> WriteRequest | None:
        """`<p>/<node>/<device>/set/<metric>` with `{"value": ..., "id": ...}`.

        The payload is read whole by `edge_agent.inbound.parse_set`; whatever is wrong with
        it becomes the request's problem (answered, nothing written). An empty payload is
        what clearing a retained command leaves: ignored, since nobody asked anything.
        A retained one was left on the broker, not sent now: refused, answered once.
        """
        if topic == self.topics.node_status:  # another agent writing here: a conflict
            if self.facts is not None:
                self.facts.status_seen(payload, retained)
            return None
        if not topic.startswith(self._base):
            return None
        parts = topic[len(self._base):].split("/")
        if len(parts) != 3 or parts[1] != "set" or not payload:
            return None
        device, metric = parts[0], parts[2]
        try:
            if retained:
                raise BadPayload("retained", RETAINED_COMMAND)
            request_id, value = parse_set(payload)
        except BadPayload as exc:
            return WriteRequest(device, ((metric, None),), safe_id(payload), reply_to=topic,
                                problem=exc.message, reason=exc.reason)
        return WriteRequest(device, ((metric, value),), request_id, reply_to=topic)

    def answer(self, request: WriteRequest, results: Sequence[WriteResult]) -> None:
        """`.../set/<metric>/result` with `{"id": ..., "ok": ..., "error": ...}`, always."""
        result = results[0]
        body: dict[str, Any] = {"id": request.request_id, "ok": result.ok}
        if result.error is not None:
            body["error"] = result.error
        self.link.publish_now(Message(f"{request.reply_to}/result", dumps(body), qos=1))
