"""The output seam: one factory per `mqtt.format`, rows as every format stores them, and
Sparkplug encoding the rows it stored without parsing their JSON back."""

from __future__ import annotations

import asyncio
import json
import typing

from edge_agent import config as config_mod
from edge_agent import outputs
from edge_agent.config import MqttConfig
from edge_agent.downlink import Downlink, WriteRequest
from edge_agent.model import PointSpec, now_ms
from edge_agent.outbox import Row
from edge_agent.outputs.base import FixedView
from edge_agent.outputs.sparkplug.session import SparkplugSession
from edge_agent.transport.base import Message
from tests.test_sparkplug_decoder import decode


class RecordingLink:
    """A `Link` that keeps what the output publishes."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.state: list[tuple[str, bytes]] = []

    def is_connected(self) -> bool:
        return True

    def publish_now(self, message: Message) -> None:
        self.sent.append(message)

    def publish_state(self, topic: str, payload: bytes) -> None:
        self.state.append((topic, payload))

    def pump(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


class Directory:
    def __init__(self, *views: FixedView) -> None:
        self._views = {v.name: v for v in views}

    def views(self) -> list[FixedView]:
        return list(self._views.values())

    def view(self, name: str) -> FixedView | None:
        return self._views.get(name)


def agent_config(fmt: str) -> config_mod.AgentConfig:
    return config_mod.validate({"node": "n1", "mqtt": {"format": fmt,
                                                       "sparkplug": {"group_id": "g"}}})


def test_every_configurable_format_has_an_output_and_no_other():
    configurable = typing.get_args(MqttConfig.model_fields["format"].annotation)
    assert set(outputs.FORMATS) == set(configurable)


def readings(value: float) -> list[dict]:
    return [{"metric": "t", "value": value, "ts": now_ms() + 1000, "quality": "good"}]


def test_every_format_stores_the_same_format_neutral_row():
    """A backlog stored under one format goes out under the other after a restart."""
    rows, poll = {}, readings(1.5)
    for fmt in outputs.FORMATS:
        output = outputs.create(agent_config(fmt), "n1", Directory(), RecordingLink())
        rows[fmt] = output.telemetry("dev", 7, poll)
    topic, payload = rows["json"]
    assert topic == "edge/n1/dev/telemetry"
    assert json.loads(payload)["seq"] == 7
    assert rows["sparkplug"][0] == topic
    assert json.loads(rows["sparkplug"][1])["readings"] == json.loads(payload)["readings"]


def live_session() -> tuple[SparkplugSession, RecordingLink]:
    link = RecordingLink()
    view = FixedView("dev", "connected", points={"t": PointSpec("t")},
                     point_types={"t": "float64"})
    session = SparkplugSession(link=link, group="g", node="n1", devices=Directory(view))
    session.on_connected()  # no primary host: births at once
    assert session.ready()
    return session, link


def test_sparkplug_encodes_rows_it_stored_from_their_readings_not_their_json():
    session, _ = live_session()
    topic, _ = session.telemetry("dev", 1, readings(2.5))
    # the stored bytes are not read back: a row this session stored encodes from memory
    message = session.encode(Row(1, "dev", 1, topic, b"not json"))
    assert message is not None and message.topic == "spBv1.0/g/DDATA/n1/dev"
    assert [m["value"] for m in decode(message.payload)["metrics"]] == [2.5]


def test_sparkplug_parses_rows_from_before_a_restart_or_a_replay():
    session, _ = live_session()
    _, payload = session.telemetry("dev", 1, readings(3.5))
    first = session.encode(Row(1, "dev", 1, "x", payload))
    replayed = session.encode(Row(1, "dev", 1, "x", payload))  # same row after a reconnect
    assert first is not None
    assert replayed is None  # parsed from JSON, and unchanged: report by exception
    stored_elsewhere = json.dumps({"readings": readings(4.5)}).encode()
    message = session.encode(Row(2, "dev", 2, "x", stored_elsewhere))
    assert message is not None
    assert [m["value"] for m in decode(message.payload)["metrics"]] == [4.5]


def test_a_request_for_an_unknown_device_gets_one_refusal_per_write():
    downlink = Downlink(RecordingChannel(), lambda name: None)
    request = WriteRequest("ghost", (("a", 1), ("b", 2)), request_id="r1")
    results = asyncio.run(downlink.handle(request))
    assert [r.ok for r in results] == [False, False]
    assert all(r.refused and "no device 'ghost'" in (r.error or "") for r in results)


def test_an_unreadable_json_command_is_answered_on_its_result_topic():
    link = RecordingLink()
    output = outputs.create(agent_config("json"), "n1", Directory(), link)
    topic = "edge/n1/dev/set/sp"
    stale = output.command(topic, b'{"value": 1, "id": "s"}', retained=True)
    assert stale is not None and stale.reason == "retained" and stale.request_id == "s"
    assert output.command(topic, b"", retained=True) is None  # clearing it: nothing asked
    request = output.command(topic, b"{oops", retained=False)
    assert request is not None and request.problem == "the payload is not JSON"
    results = asyncio.run(Downlink(output, lambda name: None).handle(request))
    output.answer(request, results)
    [answer] = link.sent
    assert answer.topic == topic + "/result"
    assert json.loads(answer.payload) == {"id": None, "ok": False,
                                          "error": "the payload is not JSON"}


class RecordingChannel:
    def command(self, topic, payload, retained):
        return None

    def answer(self, request, results):
        pass
