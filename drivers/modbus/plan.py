"""Read planning: the fewest requests that cover a point map. Pure, no I/O.

Points of one table are sorted by address and packed into blocks of at most `max_count`
registers (125) or bits (2000); a value is never split across two requests, and a block may
read across a hole of up to `max_gap` unused registers when one bigger request is cheaper
than two (each request costs a round trip, often tens of milliseconds on RS-485).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent_drivers.modbus.config import BIT_TABLES, ModbusPoint


@dataclass
class Block:
    table: str
    address: int
    count: int
    points: list[tuple[int, ModbusPoint]] = field(default_factory=list)  # (index, point)

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


def plan(points: list[ModbusPoint], max_registers: int = 125, max_bits: int = 2000,
         max_gap: int = 0) -> list[Block]:
    by_table: dict[str, list[tuple[int, ModbusPoint]]] = {}
    for index, point in enumerate(points):
        by_table.setdefault(point.table, []).append((index, point))
    blocks: list[Block] = []
    for table in ("coil", "discrete", "holding", "input"):
        entries = sorted(by_table.get(table, []), key=lambda e: (e[1].address, e[1].registers))
        limit = max_bits if table in BIT_TABLES else max_registers
        gap = max_gap if table not in BIT_TABLES else max_gap * 16
        block: Block | None = None
        for index, point in entries:
            end = point.address + point.registers
            if block is not None:
                block_end = block.address + block.count
                fits = end - block.address <= limit
                close = point.address - block_end <= gap
                if fits and close:
                    block.count = max(block_end, end) - block.address
                    block.points.append((index, point))
                    continue
            block = Block(table, point.address, point.registers, [(index, point)])
            blocks.append(block)
    return blocks


def split(block: Block) -> list[Block]:
    """The block's points in two smaller blocks, for a device that refused the whole read.

    Halving (rather than one request per point) finds a device's real limit or the hole it
    refuses to read across in a few requests, and keeps the remembered layout small.
    """
    entries = sorted(block.points, key=lambda e: (e[1].address, e[1].registers))
    # a cut before entry k is valid when no earlier value runs into it (overlapping points,
    # e.g. several bits of one register, stay together); take the valid cut nearest the middle
    cuts, end = [], 0
    for k, (_, point) in enumerate(entries):
        if k and point.address >= end:
            cuts.append(k)
        end = max(end, point.address + point.registers)
    if not cuts:
        return [block]
    half = min(cuts, key=lambda k: abs(2 * k - len(entries)))
    return [_block_of(block.table, entries[:half]), _block_of(block.table, entries[half:])]


def _block_of(table: str, entries: list[tuple[int, ModbusPoint]]) -> Block:
    start = entries[0][1].address
    end = max(p.address + p.registers for _, p in entries)
    return Block(table, start, end - start, list(entries))
