"""The USB report codec: byte offsets, types, endianness and short reports, no I/O."""

from __future__ import annotations

import struct

import pytest

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
