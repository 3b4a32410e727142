"""Decoding a read block's registers into point values. Pure: registers in, values out.

Each point is compiled once into a small decoder, so a poll costs one struct call per point
on one bytes object, with no per-register objects.

A response is device input: `decode` never raises. A point whose registers (or bits) the
response does not hold, or holds as something other than 16-bit words, is bad; whether a
response of the wrong length is a protocol error is the bus's to judge and count.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.sdk import BAD, GOOD, TYPES, Reading, decode_value, unpacker
from edge_agent_drivers.modbus.config import ModbusPoint
from edge_agent_drivers.modbus.plan import Block

Decoder = Callable[[bytes], Any]


def _compile(point: ModbusPoint, offset: int) -> Decoder:
    """A function from the block's bytes to this point's raw value (None when undecodable)."""
    if point.type in TYPES and point.order == "ABCD" and point.bit is None:
        return unpacker(">" + TYPES[point.type][0], offset)
    size = point.registers * 2
    type_name, order, bit = point.type, point.order, point.bit
    return lambda data: decode_value(data[offset:offset + size], type_name, order, bit)


def _is_word(point: ModbusPoint) -> bool:
    """A value that is one whole register: read from the register list as it is."""
    return point.type in ("uint16", "int16") and point.bit is None and point.order in (
        "ABCD", "CDAB")  # word order means nothing for one word


class BlockDecoder:
    """Turns one block's response into readings for the points it covers."""

    def __init__(self, block: Block) -> None:
        self.block = block
        if block.is_bits:
            self._bits = [(p.name, p.address - block.address) for _, p in block.points]
        else:
            self._words = [(p.name, _compile(p, (p.address - block.address) * 2),
                            p.address - block.address + p.registers) for _, p in block.points]
            # The common meter/PLC map is all 16-bit registers: those need no byte packing,
            # one list index (and a sign fold for int16) per point.
            self._plain = None
            if all(_is_word(p) for _, p in block.points):
                self._plain = [(p.name, p.address - block.address, p.type == "int16")
                               for _, p in block.points]
        self._pack = struct.Struct(f">{block.count}H").pack

    def decode(self, values: Sequence[Any]) -> list[Reading]:
        count = self.block.count
        if self.block.is_bits:
            held = len(values)
            return [Reading(name, bool(values[i]), GOOD) if i < held else Reading(name, None, BAD)
                    for name, i in self._bits]
        try:
            if self._plain is not None and len(values) >= count:
                return [Reading(name, v - 65536 if signed and v >= 32768 else v, GOOD)
                        for name, i, signed in self._plain for v in (values[i] & 0xFFFF,)]
            held = min(len(values), count)
            data = (self._pack if held == count else struct.Struct(f">{held}H").pack)(
                *values[:held])
        except (struct.error, TypeError):  # not 16-bit words: nothing in it can be trusted
            return self.failed()
        out = []
        for name, decoder, end in self._words:
            try:
                value = decoder(data) if end <= held else None
            except (struct.error, UnicodeDecodeError, ValueError, IndexError):
                value = None
            out.append(Reading(name, value, GOOD if value is not None else BAD))
        return out

    def failed(self) -> list[Reading]:
        """Readings for the block's points when the read itself failed."""
        return [Reading(p.name, None, BAD) for _, p in self.block.points]
