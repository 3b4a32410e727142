"""The USB report codec: byte offsets, types, endianness and short reports, no I/O."""

from __future__ import annotations

import math
import struct
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.model import BAD, GOOD
from edge_agent_drivers.usb.config import UsbField
from edge_agent_drivers.usb.report import ReportDecoder


def decode(data: bytes, *fields: dict) -> dict:
    decoder = ReportDecoder([UsbField.model_validate(f) for f in fields])
    return {r.metric: (r.value, r.quality) for r in decoder.decode(data)}


@pytest.mark.parametrize(("data", "field", "expected"), [
    (b"\x80\x02\x08\x66", {"type": "int16", "offset": 2}, 2150),
    (b"\x80\x02\xf8\x30", {"type": "int16", "offset": 2}, -2000),
    (b"\x66\x08", {"type": "int16", "offset": 0, "endian": "little"}, 2150),
    (b"\xff", {"type": "int8", "offset": 0}, -1),
    (b"\x00\xff", {"type": "uint8", "offset": 1}, 255),
    (struct.pack(">I", 4_000_000_000), {"type": "uint32", "offset": 0}, 4_000_000_000),
    (struct.pack("<q", -5), {"type": "int64", "offset": 0, "endian": "little"}, -5),
    (struct.pack("<f", 3.7), {"type": "float32", "offset": 0, "endian": "little"}, 3.7),
    (struct.pack(">d", 1.25), {"type": "float64", "offset": 0}, 1.25),
    (b"\x00\x04", {"type": "bool", "offset": 1, "bit": 2}, True),
    (b"\x00\x04", {"type": "bool", "offset": 1, "bit": 1}, False),
    (b"\x00\x01", {"type": "bool", "offset": 0, "bit": 8, "endian": "little"}, True),
    (b"\x00\x01", {"type": "bool", "offset": 0, "bit": 8, "endian": "big"}, False),
    (b"\x07", {"type": "bool", "offset": 0}, True),
    (b"xxOK\x00junk", {"type": "string", "offset": 2, "length": 6}, "OK"),
])
def test_each_type_decodes_at_its_byte_offset_and_endianness(data, field, expected):
    assert decode(data, {"name": "v", **field}) == {"v": (expected, GOOD)}


def test_a_report_too_short_for_a_field_makes_that_field_bad_and_keeps_the_others():
    values = decode(b"\x80\x02\x08\x66\x0f",
                    {"name": "temperature", "offset": 2, "type": "int16"},
                    {"name": "humidity", "offset": 4, "type": "uint16"})
    assert values == {"temperature": (2150, GOOD), "humidity": (None, BAD)}


def test_a_nan_float_is_bad_not_published_as_good():
    assert decode(struct.pack(">f", float("nan")), {"name": "v", "offset": 0,
                                                    "type": "float32"}) == {"v": (None, BAD)}


_FIELD = st.fixed_dictionaries({
    "name": st.sampled_from(["a", "b", "c", "d"]),
    "offset": st.integers(0, 40),
    "type": st.sampled_from(["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                             "uint64", "float32", "float64", "bool", "string"]),
    "endian": st.sampled_from(["big", "little"]),
}).map(lambda f: {**f, "length": 5} if f["type"] == "string" else f)


@settings(max_examples=400, deadline=None)
@given(st.lists(_FIELD, min_size=1, max_size=4, unique_by=lambda f: f["name"]),
       st.binary(max_size=64))
def test_any_report_of_any_length_decodes_one_reading_per_field_and_never_raises(fields, data):
    decoder = ReportDecoder([UsbField.model_validate(f) for f in fields])
    readings = decoder.decode(data)
    assert [r.metric for r in readings] == [f["name"] for f in fields]
    ends = [f["offset"] + (5 if f["type"] == "string" else
                           1 if f["type"] in ("bool", "int8", "uint8") else
                           int(f["type"][-2:].lstrip("t")) // 8) for f in fields]
    assert decoder.short(data) == any(end > len(data) for end in ends)
    for reading, end in zip(readings, ends, strict=True):
        if end > len(data):
            assert (reading.value, reading.quality) == (None, BAD)
        else:
            assert reading.quality == (GOOD if reading.value is not None else BAD)
            if isinstance(reading.value, float):
                assert math.isfinite(reading.value)


def test_a_report_handed_over_as_an_array_decodes_like_bytes():
    decoder = ReportDecoder([UsbField.model_validate({"name": "v", "offset": 0,
                                                      "type": "uint16"})])
    assert decoder.decode(array("B", [1, 2])) == decoder.decode(b"\x01\x02")
    assert decoder.short(b"\x01") and not decoder.short(b"\x01\x02")
