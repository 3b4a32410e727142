"""Decoding register words and byte strings into typed values: a pure codec, no I/O.

Shared by every driver whose devices expose binary data (Modbus registers, USB reports), so
word orders and types mean the same everywhere. Decoding a whole block of points is one
struct call per point on a bytes object: no per-register Python objects.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable
from typing import Any

# type name -> (struct code, size in bytes)
TYPES: dict[str, tuple[str, int]] = {
    "int16": ("h", 2), "uint16": ("H", 2),
    "int32": ("i", 4), "uint32": ("I", 4),
    "int64": ("q", 8), "uint64": ("Q", 8),
    "float32": ("f", 4), "float64": ("d", 8),
}
TYPE_NAMES = ("bool", *TYPES, "string")
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def register_count(type_name: str, length: int = 1) -> int:
    """How many 16-bit registers a value of this type occupies."""
    if type_name == "bool":
        return 1
    if type_name == "string":
        return (length + 1) // 2
    return TYPES[type_name][1] // 2


def to_big_endian(data: bytes, order: str) -> bytes:
    """Reorders a multi-register value into plain big-endian bytes.

    ABCD is big-endian words in big-endian order; CDAB swaps words; BADC swaps bytes within
    each word; DCBA is fully little-endian. For 64-bit values the letters generalise: CDAB
    reverses the word order, BADC swaps bytes in each word, DCBA does both.
    """
    if order == "ABCD" or len(data) <= 1:
        return data
    if order == "DCBA":
        return data[::-1]
    if order == "BADC":
        out = bytearray(data)
        out[0::2], out[1::2] = data[1::2], data[0::2]
        return bytes(out)
    words = [data[i:i + 2] for i in range(0, len(data), 2)]  # CDAB
    return b"".join(reversed(words))


def from_big_endian(data: bytes, order: str) -> bytes:
    """Inverse of to_big_endian (each reordering is its own inverse)."""
    return to_big_endian(data, order)


def decode_value(data: bytes, type_name: str, order: str = "ABCD", bit: int | None = None) -> Any:
    """Decodes one value from its registers' bytes. Returns None where the value is not valid.

    A float that is NaN or infinite is returned as None: JSON cannot carry it and a sensor
    reporting NaN is reporting a fault, not a measurement.
    """
    if type_name == "string":
        return data.split(b"\x00", 1)[0].decode("latin-1").rstrip()
    if type_name == "bool":
        word = int.from_bytes(data[:2], "big")
        return bool(word >> bit & 1) if bit is not None else word != 0
    code, size = TYPES[type_name]
    value = struct.unpack(">" + code, to_big_endian(data[:size], order))[0]
    if code in "fd" and not math.isfinite(value):
        return None
    return float(f"{value:.7g}") if code == "f" else value


def encode_value(value: Any, type_name: str, order: str = "ABCD", length: int = 1) -> bytes:
    """Encodes a value into register bytes; the inverse of decode_value (used for writes).

    Raises ValueError (or OverflowError) for a value the type cannot hold: a string longer
    than `length` bytes or outside Latin-1 is refused, never cut, so that a write puts
    exactly the value asked for into the device or nothing at all."""
    if type_name == "string":
        raw = str(value).encode("latin-1")
        if len(raw) > length:
            raise ValueError(f"{len(raw)} characters do not fit a string of {length}")
        return raw.ljust(register_count("string", length) * 2, b"\x00")
    if type_name == "bool":
        return (1 if value else 0).to_bytes(2, "big")
    code, _ = TYPES[type_name]
    if code not in "fd":
        value = round(value)
    return from_big_endian(struct.pack(">" + code, value), order)


#: one Struct per format, shared by every point of that format (a Struct is immutable)
_struct = functools.lru_cache(maxsize=256)(struct.Struct)


def unpacker(fmt: str, offset: int) -> Callable[[bytes], Any]:
    """A decoder of one fixed-size value at `offset` (struct format, e.g. ">f" or "<H").

    Compiled once per point, so decoding a poll is one struct call per value. Floats follow
    decode_value's rules: NaN or infinite is None, a float32 keeps its 7 significant digits.
    """
    unpack_from = _struct(fmt).unpack_from
    code = fmt[-1]
    if code == "f":
        def float32(data: bytes) -> Any:
            value = unpack_from(data, offset)[0]
            return float(f"{value:.7g}") if math.isfinite(value) else None
        return float32
    if code == "d":
        def float64(data: bytes) -> Any:
            value = unpack_from(data, offset)[0]
            return value if math.isfinite(value) else None
        return float64
    return lambda data: unpack_from(data, offset)[0]

