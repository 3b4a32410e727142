"""Decoding a read block's registers into point values. Pure: registers in, values out.

A block is compiled once. When its points are plain big-endian numbers that do not overlap
(the common meter and PLC map, and the benchmark's), the whole block is one struct format
with pad bytes over the holes: a poll is one `unpack_from` on the answer's bytes, and the
readings are made without a Python call per point (about 7 us for 47 points, against 40-50
us point by point). Other blocks (word orders, bits of a register, strings) compile each
point into a small decoder: one struct call per point on one bytes object.

A response is device input: `decode` never raises. A point whose registers (or bits) the
response does not hold, or holds as something other than 16-bit words, is bad; whether a
response of the wrong length is a protocol error is the bus's to judge and count.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any

from edge_agent.sdk import BAD, GOOD, TYPES, Reading, decode_value, unpacker
from edge_agent_drivers.modbus.config import ModbusPoint
from edge_agent_drivers.modbus.plan import Block

Decoder = Callable[[bytes], Any]
#: makes a Reading from a ready (metric, value, quality) tuple without a Python-level call
_new = tuple.__new__


def _compile(point: ModbusPoint, offset: int) -> Decoder:
    """A function from the block's bytes to this point's raw value (None when undecodable)."""
    if point.type in TYPES and point.order == "ABCD" and point.bit is None:
        return unpacker(">" + TYPES[point.type][0], offset)
    size = point.registers * 2
    type_name, order, bit = point.type, point.order, point.bit
    return lambda data: decode_value(data[offset:offset + size], type_name, order, bit)


def _block_struct(block: Block) -> tuple[struct.Struct, list[str],
                                         list[tuple[int, bool]]] | None:
    """One struct for the whole block, its point names, and its floats (index, is float32).

    None when a point needs more than a struct code: another word order, a bit, a string,
    or a value overlapping the previous one.
    """
    fmt: list[str] = [">"]
    names: list[str] = []
    floats: list[tuple[int, bool]] = []
    cursor = block.address
    for _, point in sorted(block.points, key=lambda e: e[1].address):
        plain_order = point.order == "ABCD" or (point.order == "CDAB" and point.registers == 1)
        if (point.type not in TYPES or not plain_order or point.bit is not None
                or point.address < cursor):
            return None
        if point.address > cursor:
            fmt.append(f"{2 * (point.address - cursor)}x")
        code = TYPES[point.type][0]
        if code in "fd":
            floats.append((len(names), code == "f"))
        fmt.append(code)
        names.append(point.name)
        cursor = point.address + point.registers
    return struct.Struct("".join(fmt)), names, floats


class BlockDecoder:
    """Turns one block's response into readings for the points it covers."""

    def __init__(self, block: Block) -> None:
        self.block = block
        if block.is_bits:
            self._bits = [(p.name, p.address - block.address) for _, p in block.points]
        else:
            #: the point-by-point decoders, compiled when first needed: a block that is one
            #: struct needs them only for a short answer (memory: 247 devices x 47 points
            #: held 5 MiB of them, docs/performance.md)
            self._words: list[tuple[str, Decoder, int]] | None = None
            self._whole = _block_struct(block)
            if self._whole is not None:
                whole, self._names, self._floats = self._whole
                self._unpack = whole.unpack_from
        self._pack = struct.Struct(f">{block.count}H").pack

    def decode(self, values: Sequence[Any], data: bytes | None = None) -> list[Reading]:
        """Readings from the block's registers (or bits); `data` is the same registers as
        big-endian bytes where the answer has them, which saves packing them again."""
        count = self.block.count
        if self.block.is_bits:
            held = len(values)
            return [Reading(name, bool(values[i]), GOOD) if i < held else Reading(name, None, BAD)
                    for name, i in self._bits]
        try:
            if data is None:
                held = min(len(values), count)
                data = (self._pack if held == count else struct.Struct(f">{held}H").pack)(
                    *values[:held])
            else:
                held = min(len(data) // 2, count)
        except (struct.error, TypeError):  # not 16-bit words: nothing in it can be trusted
            return self.failed()
        if self._whole is not None and held == count:
            return self._decode_whole(data)
        out = []
        words = self._words if self._words is not None else self._compile_words()
        for name, decoder, end in words:
            try:
                value = decoder(data) if end <= held else None
            except (struct.error, UnicodeDecodeError, ValueError, IndexError):
                value = None
            out.append(Reading(name, value, GOOD if value is not None else BAD))
        return out

    def _compile_words(self) -> list[tuple[str, Decoder, int]]:
        block = self.block
        self._words = [(p.name, _compile(p, (p.address - block.address) * 2),
                        p.address - block.address + p.registers) for _, p in block.points]
        return self._words

    def _decode_whole(self, data: bytes) -> list[Reading]:
        raw = self._unpack(data)
        count = len(raw)
        if not self._floats:
            return list(map(_new, repeat(Reading, count), zip(self._names, raw, repeat(GOOD))))
        values, qualities = list(raw), [GOOD] * count
        for i, float32 in self._floats:  # decode_value's rules: not finite is bad, and a
            value = values[i]            # float32 keeps its 7 significant digits
            if not math.isfinite(value):
                values[i], qualities[i] = None, BAD
            elif float32:
                values[i] = float(f"{value:.7g}")
        return list(map(_new, repeat(Reading, count),
                        zip(self._names, values, qualities, strict=True)))

    def failed(self) -> list[Reading]:
        """Readings for the block's points when the read itself failed."""
        return [Reading(p.name, None, BAD) for _, p in self.block.points]
