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

    The cut is the one that makes the larger part smallest: at the widest hole when there
    is one (the likely cause of exception 02), in the middle of the registers otherwise
    (exception 03, a device reading fewer than 125 registers at once). Repeated halving
    finds what the device accepts in a few requests and keeps the remembered layout small.
    """
    entries = sorted(block.points, key=lambda e: (e[1].address, e[1].registers))
    ends = [p.address + p.registers for _, p in entries]
    prefix_end, running = [], 0
    for end in ends:
        running = max(running, end)
        prefix_end.append(running)
    suffix_end = ends[:]
    for k in range(len(ends) - 2, -1, -1):
        suffix_end[k] = max(ends[k], suffix_end[k + 1])
    start = entries[0][1].address
    best: tuple[int, int, int] | None = None  # (larger span, distance from middle, cut)
    for k in range(1, len(entries)):
        cut_at = entries[k][1].address
        if cut_at < prefix_end[k - 1]:
            continue  # an earlier value runs into this one (several bits of one register)
        larger = max(prefix_end[k - 1] - start, suffix_end[k] - cut_at)
        candidate = (larger, abs(2 * k - len(entries)), k)
        if best is None or candidate < best:
            best = candidate
    if best is None:
        return [block]
    half = best[2]
    return [_block_of(block.table, entries[:half]), _block_of(block.table, entries[half:])]


def _block_of(table: str, entries: list[tuple[int, ModbusPoint]]) -> Block:
    start = entries[0][1].address
    end = max(p.address + p.registers for _, p in entries)
    return Block(table, start, end - start, list(entries))
