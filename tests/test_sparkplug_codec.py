"""Sparkplug B payloads and session rules, checked with the independent decoder.

The codec is pure (readings in, bytes out); the seq test drives a real session on a real
`MqttPublisher` against Mosquitto, in process, so hundreds of messages take a fraction of a
second.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_agent.config import MqttConfig
from edge_agent.model import PointSpec, now_ms
from edge_agent.outbox import MemoryOutbox
from edge_agent.outputs.base import FixedView
from edge_agent.outputs.sparkplug import codec
from edge_agent.outputs.sparkplug.codec import MetricDef, Reading
from edge_agent.outputs.sparkplug.session import BdSeqStore, SparkplugSession
from edge_agent.transport.mqtt import MqttPublisher
from tests.helpers import Subscriber, run_cli, wait_until
from tests.test_sparkplug_decoder import DATATYPES, decode, signed

PACKAGE = Path(__file__).resolve().parents[1] / "edge_agent" / "outputs" / "sparkplug"


def test_committed_generated_module_matches_the_proto(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PACKAGE}",
                    f"--python_out={tmp_path}", str(PACKAGE / "sparkplug_b.proto")], check=True)
    fresh = (tmp_path / "sparkplug_b_pb2.py").read_text()
    assert fresh == (PACKAGE / "sparkplug_b_pb2.py").read_text(), \
        "run scripts/gen-sparkplug-proto and commit the result"


@pytest.mark.parametrize(("point_type", "scaled", "expected"), [
    ("int16", False, "Int16"), ("uint16", False, "UInt16"), ("int32", False, "Int32"),
    ("uint32", False, "UInt32"), ("int64", False, "Int64"), ("uint64", False, "UInt64"),
    ("float32", False, "Float"), ("float64", False, "Double"), ("bool", False, "Boolean"),
    ("string", False, "String"), ("int16", True, "Double"), ("uint32", True, "Double"),
    ("float32", True, "Double"),
])
def test_point_types_map_to_sparkplug_datatypes(point_type, scaled, expected):
    assert codec.datatype_for(point_type, scaled) == DATATYPES[expected]


def test_undeclared_types_follow_the_first_value():
    assert codec.datatype_for(None, False, True) == DATATYPES["Boolean"]
    assert codec.datatype_for(None, False, 3) == DATATYPES["Int64"]
    assert codec.datatype_for(None, False, 2.5) == DATATYPES["Double"]
    assert codec.datatype_for(None, False, "x") == DATATYPES["String"]


@pytest.mark.parametrize(("kind", "value"), [("Int8", -128), ("Int16", -5), ("Int32", -70000),
                                             ("Int64", -(1 << 40)), ("UInt32", 4_000_000_000),
                                             ("UInt64", 1 << 63)])
def test_integers_round_trip_through_their_unsigned_fields(kind, value):
    spec = MetricDef("v", 9, DATATYPES[kind])
    data = codec.device_birth(1, 1, [(spec, Reading(value, 1))])
    [metric] = decode(data)["metrics"]
    expected_field = "long_value" if kind in ("Int64", "UInt64") else "int_value"
    assert metric["value_field"] == expected_field
    assert signed(metric["value"], DATATYPES[kind]) == value
    # and the agent's own reading of a command agrees
    assert codec.metric_value(codec.parse(data).metrics[0], DATATYPES[kind]) == value


def test_bad_quality_is_null_with_the_quality_property_and_history_is_flagged():
    temp = MetricDef("temperature", 4, DATATYPES["Double"], "Cel")
    data = codec.device_data(50, 3, [(temp, Reading(None, 40, "bad")),
                                     (temp, Reading(21.5, 30, "uncertain"))], [False, True])
    payload = decode(data)
    assert payload["seq"] == 3 and payload["timestamp"] == 50
    bad, old = payload["metrics"]
    assert bad["is_null"] is True and "value" not in bad and "name" not in bad
    assert bad["properties"]["Quality"] == {"type": DATATYPES["Int32"], "int_value": 0}
    assert old["is_historical"] is True and old["value"] == 21.5 and old["timestamp"] == 30
    assert old["properties"]["Quality"]["int_value"] == 500
    assert "engUnit" not in old["properties"], "units belong to the birth"


def test_node_birth_and_death_carry_the_same_bdseq():
    birth = decode(codec.node_birth(10, 200, "1.2.3", {"bdSeq": 1, "Node Control/Rebirth": 2,
                                                        "Properties/Agent Version": 3}))
    death = decode(codec.node_death(11, 200))
    assert birth["seq"] == 0 and "seq" not in death
    names = {m["name"]: m for m in birth["metrics"]}
    assert names["bdSeq"]["value"] == death["metrics"][0]["value"] == 200
    assert names["Node Control/Rebirth"]["value"] is False
    assert death["metrics"][0]["name"] == "bdSeq"


def test_bdseq_store_survives_a_restart_and_wraps(tmp_path):
    path = tmp_path / "buffer.sqlite3.sparkplug.json"
    store = BdSeqStore(path)
    assert store.next == 0
    store.advance(255)
    assert BdSeqStore(path).next == 0
    store.advance(7)
    assert BdSeqStore(path).next == 8
    path.write_text("garbage")
    assert BdSeqStore(path).next == 0  # unreadable state: start over, never crash


def test_seq_wraps_from_255_to_0_across_births_and_ddata(mosquitto):
    sub = Subscriber(mosquitto.port, "spBv1.0/#")
    try:
        seqs = asyncio.run(_publish_rows(mosquitto.url, 300))
        wait_until(lambda: len(sub.messages) >= 302, what="all messages")
        received = [decode(p) for t, p, _, _ in sub.messages if t.startswith("spBv1.0/g/")]
    finally:
        sub.close()
    assert seqs == 302
    sequence = [p["seq"] for p in received]
    assert sequence[0] == 0  # NBIRTH
    assert sequence == [i % 256 for i in range(len(sequence))]
    assert len(sequence) == 302  # NBIRTH, DBIRTH, 300 DDATA (every value changed)


async def _publish_rows(url: str, count: int) -> int:
    outbox = MemoryOutbox(1 << 24)
    view = FixedView("dev", "connected", points={"n": PointSpec("n")},
                     point_types={"n": "uint32"})
    directory = SimpleNamespace(views=lambda: [view], view={"dev": view}.get)
    link = _LateLink()
    session = SparkplugSession(link=link, group="g", node="n1", devices=directory)
    publisher = link.publisher = MqttPublisher(MqttConfig(url=url), "sp-seq-test", outbox,
                                               session)
    task = asyncio.create_task(publisher.run())
    await asyncio.wait_for(publisher.connected.wait(), 10)
    for i in range(count):
        readings = [{"metric": "n", "value": i, "ts": now_ms() + 1000 + i, "quality": "good"}]
        outbox.append("dev", i + 1, "unused", json.dumps({"readings": readings}).encode())
    publisher.pump()
    assert await publisher.drain(10)
    await publisher.stop(None)
    task.cancel()
    return count + 2


class _LateLink:
    """The session's link to a publisher that is made after it (as `Delivery` does)."""

    publisher: MqttPublisher

    def __getattr__(self, name):
        return getattr(self.publisher, name)


def test_check_config_refuses_a_primary_host_id_with_topic_characters(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("mqtt:\n  format: sparkplug\n  sparkplug: {group_id: g, primary_host: a/b}\n")
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    assert "mqtt.sparkplug.primary_host" in result.stdout + result.stderr
