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
