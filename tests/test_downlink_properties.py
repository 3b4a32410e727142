"""Property tests of the MQTT-inbound boundary: any bytes on a command topic (JSON `set`,
Sparkplug NCMD/DCMD/STATE) are read without raising, and a value that reaches the write path
is exactly the one requested and inside the point's type and limits."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import inbound, logs
from edge_agent.downlink import Downlink, WriteRequest, raw_value
from edge_agent.errors import WriteRefused
from edge_agent.inbound import BadPayload, Rejected
from edge_agent.model import PointSpec
from edge_agent.normalize import Scaling
from edge_agent.outputs.base import FixedView
from edge_agent.outputs.json import JsonOutput, dumps
from edge_agent.outputs.sparkplug import codec
from edge_agent.outputs.sparkplug import sparkplug_b_pb2 as pb
from edge_agent.outputs.sparkplug.session import SparkplugSession
from tests.test_outputs import Directory, RecordingLink, agent_config

RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
          "uint16": (0, 65535), "int32": (-(1 << 31), (1 << 31) - 1),
          "uint32": (0, (1 << 32) - 1), "int64": (-(1 << 63), (1 << 63) - 1),
          "uint64": (0, (1 << 64) - 1)}
TYPES = [*RANGES, "float32", "float64", "bool", "string", None]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=10)
scales = st.sampled_from([1.0, 0.1, 0.01, 10.0, 0.5, -1.0, 1e-300, 1e300])
offsets = st.sampled_from([0.0, 273.15, -40.0, 1e300])


@st.composite
def specs(draw: Any) -> PointSpec:
    low = draw(st.none() | st.floats(allow_nan=False, allow_infinity=False))
    high = draw(st.none() | st.floats(allow_nan=False, allow_infinity=False))
    return PointSpec("p", scale=draw(scales), offset=draw(offsets), writable=draw(st.booleans()),
                     minimum=low, maximum=high, value_type=draw(st.sampled_from(TYPES)))


def set_payloads() -> st.SearchStrategy[bytes]:
    """Bytes that are sometimes well-formed requests, sometimes near-misses, sometimes noise."""
    bodies = st.fixed_dictionaries({}, optional={"value": json_values, "id": json_values,
                                                 "x": json_values})
    as_json = bodies.map(lambda b: json.dumps(b, allow_nan=True).encode())
    spliced = st.tuples(as_json, st.binary(max_size=8), st.integers(0, 64)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2]:])
    return st.one_of(st.binary(max_size=200), as_json, spliced,
                     st.sampled_from([b"[" * 5000, b'{"value": 1' + b"0" * 400 + b"}",
                                      b'{"value": 1, "id": NaN}', b'{"value": -Infinity}',
                                      b'{"value": 1e999}', b'{"id": "\\ud800", "value": 1}']))


# -- the JSON downlink -------------------------------------------------------------------
@given(set_payloads(), st.booleans())
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_any_set_payload_becomes_one_request_that_can_always_be_answered(payload, retained):
    link = RecordingLink()
    output = JsonOutput(agent_config("json"), "n1", Directory(), link)
    request = output.command("edge/n1/dev/set/sp", payload, retained)
    if not payload:
        assert request is None  # clearing a retained command: nothing asked, nothing answered
        return
    assert isinstance(request, WriteRequest)
    assert request.request_id is None or inbound.valid_id(request.request_id)
    if request.problem is None:
        assert not retained
        [(_metric, value)] = request.writes
        assert isinstance(value, bool | int | float | str)
        assert not (isinstance(value, float) and not math.isfinite(value))
    output.answer(request, [_refused()])
    [answer] = link.sent
    body = json.loads(answer.payload)  # always encodable, whatever the request carried
    assert body["id"] == request.request_id and body["ok"] is False


def _refused():
    from edge_agent.downlink import WriteResult
    return WriteResult(False, "refused", refused=True)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_parse_set_raises_only_bad_payload(payload):
    try:
        request_id, value = inbound.parse_set(payload)
    except BadPayload as exc:
        assert exc.reason in inbound.REASONS
        return
    assert request_id is None or inbound.valid_id(request_id)
    assert isinstance(value, bool | int | float | str)


@given(json_values)
def test_a_well_formed_request_reads_back_exactly(value):
    body = {"value": value, "id": "r"}
    try:
        payload = json.dumps(body, allow_nan=False).encode()
    except ValueError:
        return
    try:
        request_id, read = inbound.parse_set(payload)
    except BadPayload:
        scalar = isinstance(value, bool | int | float | str)
        assert not scalar or (isinstance(value, int) and len(str(abs(value))) > 40) or (
            isinstance(value, str) and not inbound.is_text(value))
        return
    assert request_id == "r" and read == value and type(read) is type(value)


# -- the one validation of a value ---------------------------------------------------------
@given(specs(), json_scalars)
@settings(max_examples=700)
def test_raw_value_only_returns_the_requested_value_inside_the_point(spec, value):
    scaling = Scaling(spec)
    try:
        raw = raw_value(spec, scaling, value)
    except WriteRefused:
        return
    assert spec.writable
    kind = spec.value_type
    if isinstance(value, bool) or kind == "bool":
        assert kind in ("bool", None) and raw is value
        return
    if isinstance(value, str) or kind == "string":
        assert kind in ("string", None) and raw == value
        return
    assert isinstance(value, int | float) and math.isfinite(value)
    assert spec.minimum is None or value >= spec.minimum
    assert spec.maximum is None or value <= spec.maximum
    if kind in RANGES or (kind is None and isinstance(value, int)):
        low, high = RANGES.get(kind or "", (-(1 << 63), (1 << 64) - 1))
        assert type(raw) is int and low <= raw <= high
        if scaling.identity:
            assert raw == value  # never rounded, wrapped or clamped
        else:
            back = scaling.apply(raw)
            assert math.isclose(back, value, rel_tol=1e-6, abs_tol=1e-9 * abs(spec.scale))
    else:
        assert type(raw) is float and math.isfinite(raw)
        if kind == "float32":
            assert abs(raw) <= 3.4028234663852886e38
        if scaling.identity:
            assert raw == value


# -- Sparkplug -----------------------------------------------------------------------------
INT_DATATYPES = {"int8": pb.Int8, "int16": pb.Int16, "int32": pb.Int32, "int64": pb.Int64,
                 "uint8": pb.UInt8, "uint16": pb.UInt16, "uint32": pb.UInt32,
                 "uint64": pb.UInt64}


@st.composite
def metrics(draw: Any) -> pb.Payload.Metric:
    metric = pb.Payload.Metric()
    if draw(st.booleans()):
        metric.datatype = draw(st.integers(0, 40))
    field = draw(st.sampled_from(["int_value", "long_value", "float_value", "double_value",
                                  "boolean_value", "string_value", None]))
    if field == "int_value":
        metric.int_value = draw(st.integers(0, (1 << 32) - 1))
    elif field == "long_value":
        metric.long_value = draw(st.integers(0, (1 << 64) - 1))
    elif field == "float_value":
        metric.float_value = draw(st.floats(width=32))
    elif field == "double_value":
        metric.double_value = draw(st.floats())
    elif field == "boolean_value":
        metric.boolean_value = draw(st.booleans())
    elif field == "string_value":
        metric.string_value = draw(st.text(max_size=10))
    metric.is_null = draw(st.booleans()) and draw(st.booleans())
    return metric


@given(metrics(), st.sampled_from(list(INT_DATATYPES)))
@settings(max_examples=700)
def test_an_integer_command_is_never_wrapped_into_range(metric, kind):
    datatype = INT_DATATYPES[kind]
    try:
        value = codec.command_value(metric, datatype)
    except ValueError:
        return
    field = metric.WhichOneof("value")
    assert field in ("int_value", "long_value") and type(value) is int
    sent = getattr(metric, field)
    width = 32 if field == "int_value" else 64
    low, high = RANGES[kind]
    bits = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}.get(kind)
    if value != sent:  # read as negative: only the two two's-complement spellings are
        assert bits is not None and low <= value < 0
        assert sent in (value + (1 << bits), value + (1 << width))
    # and the point's validation takes exactly that value, or refuses it
    spec = PointSpec("p", writable=True, value_type=kind)
    try:
        raw = raw_value(spec, Scaling(spec), value)
    except WriteRefused:
        assert not low <= value <= high
        return
    assert raw == value and low <= raw <= high


@given(st.sampled_from(list(INT_DATATYPES)), st.data())
def test_every_spelling_of_an_in_range_integer_reads_back_as_itself(kind, data):
    low, high = RANGES[kind]
    value = data.draw(st.integers(low, high))
    datatype = INT_DATATYPES[kind]
    own = metric_def(datatype)
    encoded = codec.device_birth(1, 1, [(own, codec.Reading(value, 1))])  # the agent's spelling
    [metric] = codec.parse(encoded).metrics
    assert codec.command_value(metric, datatype) == value
    if value < 0 and kind != "int64":  # Tahu's Java spelling, sign-extended to 32 bits
        java = pb.Payload.Metric(datatype=datatype, int_value=value & 0xFFFFFFFF)
        assert codec.command_value(java, datatype) == value


def metric_def(datatype: int) -> codec.MetricDef:
    return codec.MetricDef("v", 9, datatype)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_a_float32_command_reads_as_the_decimal_the_requester_wrote(number):
    metric = pb.Payload.Metric(datatype=pb.Float, float_value=number)
    value = codec.command_value(metric, pb.Float)
    assert struct.unpack("<f", struct.pack("<f", value))[0] == number


def _session() -> SparkplugSession:
    points = {
        "sp": PointSpec("sp", writable=True, value_type="int16", minimum=-100, maximum=100),
        "ratio": PointSpec("ratio", writable=True, value_type="float32"),
        "on": PointSpec("on", writable=True, value_type="bool"),
        "name": PointSpec("name", writable=True, value_type="string"),
    }
    view = FixedView("dev", "connected", points=points,
                     point_types={p: s.value_type or "" for p, s in points.items()})
    return SparkplugSession(link=RecordingLink(), group="g", node="n1",
                            devices=Directory(view), primary_host="host")


def sparkplug_payloads() -> st.SearchStrategy[bytes]:
    built = st.lists(metrics(), max_size=3).map(
        lambda ms: pb.Payload(timestamp=1, metrics=ms).SerializeToString())
    named = st.tuples(st.sampled_from(["sp", "ratio", "on", "name", "Node Control/Rebirth",
                                       "nope"]), metrics()).map(_named)
    return st.one_of(st.binary(max_size=120), built, named)


def _named(pair: tuple[str, pb.Payload.Metric]) -> bytes:
    name, metric = pair
    metric.name = name
    return pb.Payload(timestamp=1, metrics=[metric]).SerializeToString()


class Target:
    """A device that records what reaches it (the write path's far end)."""

    def __init__(self, view: FixedView) -> None:
        self.name, self.status, self.points = view.name, "connected", view.points
        self.writes: Counter[str] = Counter()
        self.log = logs.get("test")
        self.received: list[tuple[str, Any]] = []

    def scaling(self, metric: str) -> Scaling:
        return Scaling(self.points[metric])

    async def write_raw(self, metric: str, raw: Any) -> None:
        self.received.append((metric, raw))


@given(st.sampled_from(["spBv1.0/g/DCMD/n1/dev", "spBv1.0/g/DCMD/n1/ghost",
                        "spBv1.0/g/NCMD/n1", "spBv1.0/STATE/host"]),
       st.one_of(sparkplug_payloads(), set_payloads()), st.booleans())
@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
def test_any_sparkplug_command_is_read_without_raising_and_writes_only_valid_values(
        topic, payload, retained):
    session = _session()
    outcome = session.command(topic, payload, retained)
    assert outcome is None or isinstance(outcome, WriteRequest | Rejected)
    if not isinstance(outcome, WriteRequest):
        return
    view = session.directory.view("dev")
    assert view is not None
    target = Target(view)
    downlink = Downlink(session, lambda name: target if name == "dev" else None)
    results = asyncio.run(downlink.handle(outcome))
    session.answer(outcome, results)
    assert len(results) == max(1, len(outcome.writes))
    if outcome.problem is not None or not all(r.ok for r in results):
        assert target.received == []  # validated whole: nothing of a bad request written
        return
    for (metric, value), (written_metric, raw) in zip(outcome.writes, target.received,
                                                      strict=True):
        spec = view.points[metric]
        assert written_metric == metric and raw == value
        if spec.value_type == "int16":
            assert type(raw) is int and -100 <= raw <= 100
        elif spec.value_type == "float32":
            assert math.isfinite(raw) and abs(raw) <= 3.4028234663852886e38
        elif spec.value_type == "bool":
            assert type(raw) is bool
        else:
            assert type(raw) is str


@given(st.one_of(st.binary(max_size=100), set_payloads(),
                 st.fixed_dictionaries({"online": json_values, "timestamp": json_values}).map(
                     lambda b: json.dumps(b, allow_nan=True).encode())))
@settings(max_examples=800)
def test_state_parses_to_a_boolean_and_a_timestamp_or_is_refused(payload):
    try:
        online, ts = inbound.parse_state(payload)
    except BadPayload as exc:
        assert exc.reason in inbound.REASONS
        return
    assert type(online) is bool and type(ts) is int and 0 <= ts <= inbound.MAX_TIMESTAMP_MS


@given(st.integers(1, 40))
def test_nesting_is_refused_beyond_the_cap_and_read_within_it(depth):
    payload = b'{"value": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"
    if depth + 1 > inbound.MAX_DEPTH:
        try:
            inbound.parse_set(payload)
        except BadPayload as exc:
            assert "deeper" in exc.message
        else:
            raise AssertionError("nesting beyond the cap was read")
    else:
        assert inbound.parse_set(payload) == (None, 1)


def test_answers_are_encodable_for_every_valid_id():
    for rid in ("x" * inbound.MAX_ID_CHARS, -inbound.MAX_ID_INTEGER, 1.5, None):
        assert json.loads(dumps({"id": rid}))["id"] == rid
