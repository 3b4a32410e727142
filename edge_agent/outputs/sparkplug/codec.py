"""Sparkplug B payloads from the agent's readings, and back from commands: no I/O, no MQTT.

Everything is encoded by the protobuf runtime from the project's `sparkplug_b.proto`; this
module only decides which fields to fill. It knows the Sparkplug rules that concern one
message (aliases and names, datatypes, null and quality, historical flags); the order of
messages, seq and bdSeq are the session's.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from edge_agent.inbound import MAX_PAYLOAD_BYTES
from edge_agent.model import BAD, GOOD
from edge_agent.outputs.sparkplug import sparkplug_b_pb2 as pb

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
VERSION = "Properties/Agent Version"
UNIT_PROPERTY = "engUnit"  # the property key Ignition and most hosts read as engineering unit
QUALITY_PROPERTY = "Quality"  # the specification's quality property (Int32)
QUALITY_CODES = {BAD: 0, GOOD: 192, "uncertain": 500}  # 500 is Sparkplug's STALE

#: point types of the config (Modbus `type`, USB `fields[].type`) -> Sparkplug datatype
POINT_TYPES: dict[str, int] = {
    "bool": pb.Boolean,
    "int8": pb.Int8, "uint8": pb.UInt8,
    "int16": pb.Int16, "uint16": pb.UInt16,
    "int32": pb.Int32, "uint32": pb.UInt32,
    "int64": pb.Int64, "uint64": pb.UInt64,
    "float32": pb.Float, "float64": pb.Double,
    "string": pb.String,
}
INTEGER_TYPES = frozenset({pb.Int8, pb.UInt8, pb.Int16, pb.UInt16, pb.Int32, pb.UInt32,
                           pb.Int64, pb.UInt64})
_SIGNED_BITS: dict[int, int] = {pb.Int8: 8, pb.Int16: 16, pb.Int32: 32, pb.Int64: 64}


class MetricDef(NamedTuple):
    """A metric as born: what a DBIRTH announces and every later DDATA refers to by alias."""

    name: str
    alias: int
    datatype: int
    unit: str | None = None


def datatype_for(point_type: str | None, scaled: bool, sample: Any = None) -> int:
    """The Sparkplug datatype of a point.

    A scaled or offset integer register publishes fractions (215 * 0.1 = 21.5), so it is a
    Double; an unscaled one keeps its register type (Modbus int16 -> Int16). Without a declared
    type the first value decides.
    """
    declared = POINT_TYPES.get(point_type or "")
    if declared is not None:
        if scaled and (declared in INTEGER_TYPES or declared == pb.Float):
            return pb.Double
        return declared
    if isinstance(sample, bool):
        return pb.Boolean
    if isinstance(sample, int):
        return pb.Int64
    if isinstance(sample, float):
        return pb.Double
    if isinstance(sample, str):
        return pb.String
    return pb.Double if scaled else pb.Unknown


def topic(group: str, verb: str, node: str, device: str | None = None) -> str:
    base = f"{NAMESPACE}/{group}/{verb}/{node}"
    return f"{base}/{device}" if device is not None else base


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/STATE/{host_id}"


# -- values --------------------------------------------------------------------------------
def _set_value(metric: pb.Payload.Metric, datatype: int, value: Any) -> None:
    """Fills the oneof field the specification assigns to `datatype`.

    Signed integers travel in unsigned fields as two's complement of their own width (Int16
    -1 is 0xFFFF), which a reader truncating to the width decodes whatever convention it uses.
    """
    if value is None or (value.__class__ is float and not math.isfinite(value)):
        metric.is_null = True
    elif datatype == pb.Boolean:
        metric.boolean_value = bool(value)
    elif datatype == pb.Double:
        metric.double_value = float(value)
    elif datatype == pb.Float:
        metric.float_value = float(value)
    elif datatype in INTEGER_TYPES:
        number = round(value) if isinstance(value, float) else int(value)
        bits = _SIGNED_BITS.get(datatype)
        if bits is not None and number < 0:
            number += 1 << bits
        if datatype in (pb.Int64, pb.UInt64):
            metric.long_value = number
        else:
            metric.int_value = number
    elif datatype == pb.DateTime:
        metric.long_value = int(value)
    else:
        metric.string_value = str(value)


#: the value fields a command may use for a metric of each datatype (the specification puts
#: Int8..UInt16 in int_value and UInt32..UInt64 in long_value; writers disagree on UInt32 and
#: on the width of signed values, so both integer fields are read, each exactly)
_COMMAND_FIELDS: dict[int, frozenset[str]] = {
    **{kind: frozenset({"int_value", "long_value"}) for kind in INTEGER_TYPES},
    pb.Float: frozenset({"float_value", "double_value"}),
    pb.Double: frozenset({"float_value", "double_value"}),
    pb.Boolean: frozenset({"boolean_value"}),
    pb.String: frozenset({"string_value"}),
    pb.Text: frozenset({"string_value"}),
    pb.Unknown: frozenset({"int_value", "long_value", "float_value", "double_value",
                           "boolean_value", "string_value"}),
}
_FIELD_BITS = {"int_value": 32, "long_value": 64}
DATATYPE_NAMES = {number: name for name, number in pb.DataType.items()}


def command_value(metric: pb.Payload.Metric, datatype: int) -> Any:
    """The value a DCMD metric asks for, as the requester expressed it; raises ValueError.

    The metric's own `datatype`, when given, must be the born one, and its value must sit in
    a field that datatype uses. A signed value arrives as two's complement, either of its
    own width (Int16 -1 as 0xFFFF, what this agent publishes) or sign-extended to the
    field's width (0xFFFFFFFF, what Tahu's Java library sends); only those two spellings are
    read as negative. Any other integer is taken at face value, so that 70000 for an Int16
    stays 70000 and is refused by the point's checks instead of being wrapped into range.
    """
    name = DATATYPE_NAMES.get(datatype, str(datatype))
    if metric.HasField("datatype") and metric.datatype not in (datatype, pb.Unknown):
        raise ValueError(f"datatype {DATATYPE_NAMES.get(metric.datatype, metric.datatype)} "
                         f"does not match the metric's {name}")
    kind = metric.WhichOneof("value")
    if metric.is_null or kind is None:
        raise ValueError("the metric carries no value")
    if kind not in _COMMAND_FIELDS.get(datatype, frozenset()):
        raise ValueError(f"a {kind} cannot set a metric of datatype {name}")
    value = getattr(metric, kind)
    bits = _SIGNED_BITS.get(datatype)
    if bits is not None and kind in _FIELD_BITS:
        half, width = 1 << (bits - 1), 1 << _FIELD_BITS[kind]
        if (1 << bits) - half <= value < 1 << bits and bits < _FIELD_BITS[kind]:
            value -= 1 << bits
        elif width - half <= value < width:
            value -= width
    elif kind == "float_value":
        value = _exact_float32(value)
    return value


def _exact_float32(value: float) -> float:
    """A float32 as the shortest decimal that reads back as the same float32 (0.1, not
    0.10000000149011612): the number the requester wrote, before protobuf widened it."""
    if not math.isfinite(value):
        return value
    for digits in range(6, 10):
        text = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", text))[0] == value:
            return text
    return value


def metric_value(metric: pb.Payload.Metric, datatype: int) -> Any:
    """The Python value of a metric of this agent's own encoding, signed by its datatype
    (what `_set_value` wrote); commands are read by `command_value`."""
    if metric.is_null:
        return None
    kind = metric.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(metric, kind)
    bits = _SIGNED_BITS.get(datatype)
    if bits is not None and kind in ("int_value", "long_value"):
        value &= (1 << bits) - 1
        if value >= 1 << (bits - 1):
            value -= 1 << bits
    return value


def _add_property(props: pb.Payload.PropertySet, key: str, datatype: int, value: Any) -> None:
    props.keys.append(key)
    prop = props.values.add()
    prop.type = datatype
    if datatype == pb.String:
        prop.string_value = value
    else:
        prop.int_value = value


# -- messages ------------------------------------------------------------------------------
class Reading(NamedTuple):
    """One value to encode: the agent's reading dict reduced to what Sparkplug carries."""

    value: Any
    ts: int
    quality: str = GOOD


def _add_metric(payload: pb.Payload, spec: MetricDef, reading: Reading | None, ts: int,
                birth: bool, historical: bool = False) -> None:
    metric = payload.metrics.add()
    if birth:
        metric.name = spec.name
        metric.datatype = spec.datatype
    metric.alias = spec.alias
    if reading is None:
        metric.timestamp = ts
        metric.is_null = True
    else:
        metric.timestamp = reading.ts
        _set_value(metric, spec.datatype, reading.value)
        if reading.quality != GOOD:
            _add_property(metric.properties, QUALITY_PROPERTY, pb.Int32,
                          QUALITY_CODES.get(reading.quality, 0))
    if historical:
        metric.is_historical = True
    if birth and spec.unit:
        _add_property(metric.properties, UNIT_PROPERTY, pb.String, spec.unit)


def node_birth(ts: int, bd_seq: int, version: str, aliases: dict[str, int]) -> bytes:
    """NBIRTH: seq 0, the bdSeq of this connection's will, and `Node Control/Rebirth` false."""
    payload = pb.Payload(timestamp=ts, seq=0)
    for spec, value in ((MetricDef(BDSEQ, aliases[BDSEQ], pb.UInt64), bd_seq),
                        (MetricDef(REBIRTH, aliases[REBIRTH], pb.Boolean), False),
                        (MetricDef(VERSION, aliases[VERSION], pb.String), version)):
        _add_metric(payload, spec, Reading(value, ts), ts, birth=True)
    return payload.SerializeToString()


def node_death(ts: int, bd_seq: int) -> bytes:
    """NDEATH (the MQTT will): no seq, only the bdSeq that pairs it with its NBIRTH."""
    payload = pb.Payload(timestamp=ts)
    metric = payload.metrics.add(name=BDSEQ, timestamp=ts, datatype=pb.UInt64)
    metric.long_value = bd_seq
    return payload.SerializeToString()


def device_birth(ts: int, seq: int,
                 metrics: Iterable[tuple[MetricDef, Reading | None]]) -> bytes:
    """DBIRTH: every metric the device will report, with name, alias, datatype and unit."""
    payload = pb.Payload(timestamp=ts, seq=seq)
    for spec, reading in metrics:
        _add_metric(payload, spec, reading, ts, birth=True)
    return payload.SerializeToString()


def device_data(ts: int, seq: int, metrics: Iterable[tuple[MetricDef, Reading]],
                historical: Iterable[bool]) -> bytes:
    """DDATA: changed metrics by alias only; replayed ones flagged `is_historical`."""
    payload = pb.Payload(timestamp=ts, seq=seq)
    for (spec, reading), old in zip(metrics, historical, strict=True):
        _add_metric(payload, spec, reading, ts, birth=False, historical=old)
    return payload.SerializeToString()


def device_death(ts: int, seq: int) -> bytes:
    return pb.Payload(timestamp=ts, seq=seq).SerializeToString()


def parse(data: bytes) -> pb.Payload:
    """Parses a received payload (NCMD, DCMD); raises ValueError on garbage or on more than
    `edge_agent.inbound.MAX_PAYLOAD_BYTES` (protobuf itself refuses nesting beyond 100)."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"the payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    payload = pb.Payload()
    try:
        payload.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, or a RuntimeWarning-free upb error
        raise ValueError(f"not a Sparkplug B payload: {exc}") from None
    return payload
