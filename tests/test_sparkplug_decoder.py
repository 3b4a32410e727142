"""An independent Sparkplug B decoder for the tests, and the checks that it is one.

It does not use the project's .proto or its generated module: the protobuf runtime only splits
the wire format into (field number, wire type, raw value) without any schema
(`UnknownFieldSet` over an `Empty`), and the field numbers and value fields below are typed in
from the specification's Payload chapter. A wrong field number or type in
`sparkplug_b.proto` would therefore show up here as a wrong or missing field.

(pysparkplug and mqtt-spb-wrapper, the PyPI decoders, pin paho-mqtt < 2 and an old protobuf,
so they cannot be installed next to the agent.)
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

# Sparkplug B payload, field numbers from the specification
PAYLOAD = {1: "timestamp", 2: "metrics", 3: "seq", 4: "uuid", 5: "body"}
METRIC = {1: "name", 2: "alias", 3: "timestamp", 4: "datatype", 5: "is_historical",
          6: "is_transient", 7: "is_null", 8: "metadata", 9: "properties"}
METRIC_VALUES = {10: "int_value", 11: "long_value", 12: "float_value", 13: "double_value",
                 14: "boolean_value", 15: "string_value", 16: "bytes_value"}
PROPERTY_VALUE = {1: "type", 2: "is_null", 3: "int_value", 4: "long_value", 5: "float_value",
                  6: "double_value", 7: "boolean_value", 8: "string_value"}
# DataType enum values, from the specification
DATATYPES = {"Int8": 1, "Int16": 2, "Int32": 3, "Int64": 4, "UInt8": 5, "UInt16": 6,
             "UInt32": 7, "UInt64": 8, "Float": 9, "Double": 10, "Boolean": 11, "String": 12}
_SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    message = empty_pb2.Empty()
    message.ParseFromString(data)
    return [(f.field_number, f.wire_type, f.data) for f in UnknownFieldSet(message)]


def _scalar(name: str, wire_type: int, raw: Any) -> Any:
    if name.startswith("float"):
        assert wire_type == 5, f"{name} must be fixed32"
        return struct.unpack("<f", struct.pack("<I", raw))[0]
    if name.startswith("double"):
        assert wire_type == 1, f"{name} must be fixed64"
        return struct.unpack("<d", struct.pack("<Q", raw))[0]
    if name.startswith("string") or name in ("name", "uuid"):
        assert wire_type == 2
        return raw.decode()
    if name.startswith("bytes") or name == "body":
        return raw
    assert wire_type == 0, f"{name} must be a varint"
    if name.startswith("bool") or name.startswith("is_"):
        return bool(raw)
    return raw


def signed(value: int, datatype: int) -> int:
    """Reads an Int8/16/32/64 value out of its unsigned field, as any host does: by width."""
    bits = _SIGNED_BITS.get(datatype)
    if bits is None:
        return value
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def decode_properties(data: bytes) -> dict[str, Any]:
    keys, values = [], []
    for number, _wire, raw in _fields(data):
        if number == 1:
            keys.append(raw.decode())
        elif number == 2:
            value: dict[str, Any] = {}
            for n, w, r in _fields(raw):
                name = PROPERTY_VALUE[n]
                value[name] = _scalar(name, w, r)
            values.append(value)
    assert len(keys) == len(values), "PropertySet keys and values must pair up"
    return dict(zip(keys, values, strict=True))


def decode_metric(data: bytes) -> dict[str, Any]:
    metric: dict[str, Any] = {}
    for number, wire, raw in _fields(data):
        if number == 9:
            metric["properties"] = decode_properties(raw)
        elif number in METRIC:
            metric[METRIC[number]] = _scalar(METRIC[number], wire, raw)
        elif number in METRIC_VALUES:
            assert "value_field" not in metric, "value is a oneof: only one may be set"
            metric["value_field"] = METRIC_VALUES[number]
            metric["value"] = _scalar(METRIC_VALUES[number], wire, raw)
        else:
            raise AssertionError(f"unexpected Metric field {number}")
    return metric


def decode(data: bytes) -> dict[str, Any]:
    """A Sparkplug B payload as the specification's JSON representation (plus value_field)."""
    payload: dict[str, Any] = {"metrics": []}
    for number, wire, raw in _fields(data):
        name = PAYLOAD[number]
        if name == "metrics":
            payload["metrics"].append(decode_metric(raw))
        else:
            payload[name] = _scalar(name, wire, raw)
    return payload


# -- the decoder itself, on byte vectors written out by hand from the wire format -------------
def test_decoder_reads_a_hand_encoded_ddata():
    # Payload{timestamp=1000, seq=7, metrics=[Metric{alias=5, timestamp=1000, is_historical,
    #         double_value=21.5}, Metric{alias=6, int_value=0xFFFB (Int16 -5)}]}
    metric1 = (b"\x10\x05" + b"\x18\xe8\x07" + b"\x28\x01" + b"\x69" + struct.pack("<d", 21.5))
    metric2 = b"\x10\x06" + b"\x50\xfb\xff\x03"
    data = (b"\x08\xe8\x07" + b"\x12" + bytes([len(metric1)]) + metric1
            + b"\x12" + bytes([len(metric2)]) + metric2 + b"\x18\x07")
    payload = decode(data)
    assert payload["timestamp"] == 1000 and payload["seq"] == 7
    first, second = payload["metrics"]
    assert first == {"alias": 5, "timestamp": 1000, "is_historical": True,
                     "value_field": "double_value", "value": 21.5}
    assert second["value_field"] == "int_value"
    assert signed(second["value"], DATATYPES["Int16"]) == -5


def test_decoder_reads_a_hand_encoded_property_set_and_float():
    unit = b"\x08\x0c" + b"\x42\x03bar"  # PropertyValue{type=String, string_value="bar"}
    props = b"\x0a\x07engUnit" + b"\x12" + bytes([len(unit)]) + unit
    metric = (b"\x0a\x08pressure" + b"\x20\x09" + b"\x65" + struct.pack("<f", 2.5)
              + b"\x4a" + bytes([len(props)]) + props)
    payload = decode(b"\x12" + bytes([len(metric)]) + metric)
    assert payload["metrics"] == [{"name": "pressure", "datatype": DATATYPES["Float"],
                                   "value_field": "float_value", "value": 2.5,
                                   "properties": {"engUnit": {"type": 12,
                                                              "string_value": "bar"}}}]
