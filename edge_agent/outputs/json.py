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
from edge_agent.downlink import WriteRequest, WriteResult
from edge_agent.model import now_ms
from edge_agent.outbox import Row
from edge_agent.outputs.base import DeviceDirectory, DeviceView, ReadingDict
from edge_agent.transport.base import Link, Message

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

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

    def node_status_payload(self, state: str) -> bytes:
        """The node's status (`online` / `offline`): the one place its payload is built."""
        return _dumps({"state": state, "version": __version__, "ts": now_ms()}).encode()

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
                 link: Link) -> None:
        self.topics = JsonTopics(config.mqtt.topic_prefix, node)
        self.devices, self.link = devices, link
        self.qos = config.mqtt.qos
        self._telemetry_topics: dict[str, str] = {}
        self._base = f"{self.topics.prefix}/{node}/"

    # -- delivery ------------------------------------------------------------------------
    def will(self) -> Message:
        return self._node_status("offline")

    def subscriptions(self) -> Sequence[str]:
        return (self.topics.set_filter(),)

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

    def _node_status(self, state: str) -> Message:
        return Message(self.topics.node_status, self.topics.node_status_payload(state),
                       qos=1, retain=True)

    # -- devices -------------------------------------------------------------------------
    def device_status(self, device: DeviceView) -> None:
        self.link.publish_state(self.topics.device_status(device.name),
                                self.topics.device_status_payload(device.status, device.error))

    def device_stopped(self, name: str, removed: bool) -> None:
        if removed:  # its retained status would claim it still exists
            self.link.publish_state(self.topics.device_status(name), b"")

    # -- downlink ------------------------------------------------------------------------
    def command(self, topic: str, payload: bytes, retained: bool) -> WriteRequest | None:
        """`<p>/<node>/<device>/set/<metric>` with `{"value": ..., "id": ...}`."""
        if retained:  # a retained `set` is a stale command left on the broker: never act on it
            return None
        if not topic.startswith(self._base):
            return None
        parts = topic[len(self._base):].split("/")
        if len(parts) != 3 or parts[1] != "set":
            return None
        device, metric = parts[0], parts[2]
        request_id, value, problem = _parse(payload)
        return WriteRequest(device, ((metric, value),), request_id, reply_to=topic,
                            problem=problem)

    def answer(self, request: WriteRequest, results: Sequence[WriteResult]) -> None:
        """`.../set/<metric>/result` with `{"id": ..., "ok": ..., "error": ...}`, always."""
        result = results[0]
        body: dict[str, Any] = {"id": request.request_id, "ok": result.ok}
        if result.error is not None:
            body["error"] = result.error
        self.link.publish_now(Message(f"{request.reply_to}/result", dumps(body), qos=1))


def _parse(payload: bytes) -> tuple[Any, Any, str | None]:
    """(id, value, problem) from a set payload."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None, None, "the payload is not JSON"
    if not isinstance(body, dict):
        return None, None, 'the payload must be an object like {"value": 1, "id": "..."}'
    request_id = body.get("id")
    if "value" not in body:
        return request_id, None, 'the payload has no "value"'
    return request_id, body["value"], None
