"""Decoding a USB report into readings: a pure codec, bytes in, readings out, no I/O.

Each field is compiled once into a struct unpacker at a fixed offset, so decoding a report
costs one struct call per field. A field the report is too short for is published as bad
(value None), never as a stale or guessed value. A report is device input: whatever its length
or content, `decode` returns one reading per field and never raises (the driver counts short
reports as `short_report`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from edge_agent.sdk import BAD, GOOD, Reading, unpacker
from edge_agent_drivers.usb.config import UsbField

_CODES = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
          "int64": "q", "uint64": "Q", "float32": "f", "float64": "d"}


def field_size(field: UsbField) -> int:
    if field.type == "string":
        return field.length
    if field.type == "bool":
        return 1 if field.bit is None else (field.bit // 8) + 1
    return struct.calcsize(_CODES[field.type])


def _compile(field: UsbField) -> Callable[[bytes], Any]:
    offset, size = field.offset, field_size(field)
    if field.type == "string":
        return lambda data: data[offset:offset + size].split(b"\x00", 1)[0].decode("latin-1")
    if field.type == "bool":
        if field.bit is None:
            return lambda data: data[offset] != 0
        bit = field.bit
        order = field.endian
        return lambda data: bool(int.from_bytes(data[offset:offset + size], order) >> bit & 1)
    return unpacker((">" if field.endian == "big" else "<") + _CODES[field.type], offset)


class ReportDecoder:
    """Turns one report (bytes read from the IN endpoint) into one reading per field."""

    def __init__(self, fields: list[UsbField]) -> None:
        self._fields = [(f.name, f.offset + field_size(f), _compile(f)) for f in fields]
        #: the shortest report that holds every field
        self.min_length = max(end for _, end, _ in self._fields)

    def short(self, data: bytes) -> bool:
        """True when the report cannot hold every field (some of them will be bad)."""
        return len(data) < self.min_length

    def decode(self, data: bytes) -> list[Reading]:
        if not isinstance(data, bytes):
            data = bytes(data)  # pyusb hands over array('B')
        size = len(data)
        out = []
        for name, end, decode in self._fields:
            try:
                value = decode(data) if end <= size else None
            except (struct.error, IndexError, ValueError, TypeError):
                value = None
            out.append(Reading(name, value, GOOD if value is not None else BAD))
        return out
