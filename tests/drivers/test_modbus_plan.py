"""drivers/modbus/plan.py: the fewest requests for a point map, and splitting refused blocks."""

from __future__ import annotations

import pytest

from edge_agent_drivers.modbus.config import ModbusDevice, ModbusPoint
from edge_agent_drivers.modbus.plan import plan, split


def points(*specs: tuple) -> list[ModbusPoint]:
    """(table, address, type[, extra]) -> points named p0, p1, ..."""
    out = []
    for i, spec in enumerate(specs):
        table, address, type_name, *extra = spec
        out.append(ModbusPoint(name=f"p{i}", table=table, address=address, type=type_name,
                               **(extra[0] if extra else {})))
    return out


def layout(blocks) -> list[tuple[str, int, int]]:
    return [(b.table, b.address, b.count) for b in blocks]


def test_adjacent_points_of_one_table_are_one_request():
    pts = points(("holding", 0, "int16"), ("holding", 1, "float32"), ("holding", 3, "uint32"),
                 ("holding", 5, "float64"))
    assert layout(plan(pts)) == [("holding", 0, 9)]


def test_tables_never_share_a_request():
    pts = points(("holding", 0, "uint16"), ("input", 1, "uint16"), ("coil", 0, "bool"),
                 ("discrete", 0, "bool"), ("holding", 1, "uint16"))
    assert layout(plan(pts)) == [("coil", 0, 1), ("discrete", 0, 1), ("holding", 0, 2),
                                 ("input", 1, 1)]


def test_point_order_in_the_config_does_not_matter():
    pts = points(("holding", 10, "uint16"), ("holding", 0, "uint16"), ("holding", 5, "uint16"))
    assert layout(plan(pts, max_gap=10)) == [("holding", 0, 11)]


def test_a_hole_wider_than_max_gap_splits_the_read():
    pts = points(("holding", 0, "uint16"), ("holding", 4, "uint16"), ("holding", 20, "uint16"))
    assert layout(plan(pts, max_gap=0)) == [("holding", 0, 1), ("holding", 4, 1),
                                            ("holding", 20, 1)]
    assert layout(plan(pts, max_gap=3)) == [("holding", 0, 5), ("holding", 20, 1)]
    assert layout(plan(pts, max_gap=15)) == [("holding", 0, 21)]


def test_bit_tables_read_across_sixteen_bits_per_register_of_gap():
    pts = points(("coil", 0, "bool"), ("coil", 16, "bool"), ("coil", 40, "bool"))
    assert layout(plan(pts, max_gap=1)) == [("coil", 0, 17), ("coil", 40, 1)]


def test_requests_stay_within_max_registers_and_never_split_a_value():
    # 60 float32 at 0..119 = 120 registers; max 50 per request -> 25 values (50 regs) each
    pts = points(*[("holding", 2 * i, "float32") for i in range(60)])
    blocks = plan(pts, max_registers=50)
    assert layout(blocks) == [("holding", 0, 50), ("holding", 50, 50), ("holding", 100, 20)]
    # an odd limit: a float32 that would straddle the limit moves to the next request
    blocks = plan(pts, max_registers=7)
    assert all(b.count <= 7 for b in blocks)
    assert all(b.count % 2 == 0 for b in blocks)
    assert len(blocks) == 20  # 3 floats per request, 60 floats


def test_the_contract_limits_of_125_registers_and_2000_bits():
    regs = points(*[("input", a, "uint16") for a in range(300)])
    assert layout(plan(regs)) == [("input", 0, 125), ("input", 125, 125), ("input", 250, 50)]
    bits = points(*[("discrete", a, "bool") for a in range(4100)])
    assert layout(plan(bits)) == [("discrete", 0, 2000), ("discrete", 2000, 2000),
                                  ("discrete", 4000, 100)]


def test_several_bits_of_one_register_are_read_once():
    pts = points(("holding", 7, "bool", {"bit": 0}), ("holding", 7, "bool", {"bit": 5}),
                 ("holding", 7, "uint16"), ("holding", 8, "bool", {"bit": 15}))
    blocks = plan(pts)
    assert layout(blocks) == [("holding", 7, 2)]
    assert sorted(i for i, _ in blocks[0].points) == [0, 1, 2, 3]


def test_every_point_lands_in_exactly_one_block_that_covers_it():
    pts = points(*[("holding", a, t) for a, t in
                   [(0, "int16"), (3, "float64"), (2, "uint32"), (100, "int64"),
                    (130, "string", ), (240, "uint16")]])
    blocks = plan(pts, max_registers=20, max_gap=5)
    seen = sorted(i for b in blocks for i, _ in b.points)
    assert seen == list(range(len(pts)))
    for block in blocks:
        for _, point in block.points:
            assert block.address <= point.address
            assert point.address + point.registers <= block.address + block.count


def test_split_cuts_at_the_widest_hole():
    pts = points(*[("holding", a, "uint16") for a in (0, 1, 2, 3, 10, 11)])
    (block,) = plan(pts, max_gap=10)
    first, second = split(block)
    assert layout([first, second]) == [("holding", 0, 4), ("holding", 10, 2)]
    assert [p.name for _, p in first.points] == ["p0", "p1", "p2", "p3"]
    assert [p.name for _, p in second.points] == ["p4", "p5"]


def test_split_without_holes_halves_the_registers_at_a_value_boundary():
    pts = points(*[("holding", 2 * i, "float32") for i in range(10)])
    (block,) = plan(pts)
    assert layout(split(block)) == [("holding", 0, 10), ("holding", 10, 10)]
    pts = points(("holding", 0, "float64"), ("holding", 4, "uint16"), ("holding", 5, "uint16"),
                 ("holding", 6, "uint16"), ("holding", 7, "uint16"))
    (block,) = plan(pts)
    assert layout(split(block)) == [("holding", 0, 4), ("holding", 4, 4)]


def test_split_keeps_overlapping_points_together():
    pts = points(("holding", 0, "uint32"), ("holding", 1, "bool", {"bit": 0}),
                 ("holding", 1, "bool", {"bit": 1}), ("holding", 2, "uint16"))
    (block,) = plan(pts)
    parts = split(block)
    assert layout(parts) == [("holding", 0, 2), ("holding", 2, 1)]


def test_a_single_value_cannot_be_split():
    (block,) = plan(points(("holding", 0, "float64")))
    assert split(block) == [block]
    (block,) = plan(points(("holding", 0, "uint16", {}), ("holding", 0, "bool", {"bit": 3})))
    assert split(block) == [block]


def test_repeated_splitting_reaches_single_points():
    (block,) = plan(points(*[("holding", a, "uint16") for a in range(16)]))
    pending, leaves = [block], []
    while pending:
        parts = split(pending.pop())
        if len(parts) == 1:
            leaves += parts
        else:
            pending += parts
    assert sorted(layout(leaves)) == [("holding", a, 1) for a in range(16)]


@pytest.mark.parametrize(("port", "gap"), [("tcp://10.0.0.5:502", 32), ("/dev/ttyUSB0", 10)])
def test_max_gap_default_depends_on_the_transport(port, gap):
    device = ModbusDevice(name="d", driver="modbus", port=port,
                          points=[{"name": "a", "address": 0}])
    assert device.gap_registers == gap
    explicit = ModbusDevice(name="d", driver="modbus", port=port, max_gap=0,
                            points=[{"name": "a", "address": 0}])
    assert explicit.gap_registers == 0


@pytest.mark.parametrize(("settings", "silence"), [
    ({"baudrate": 9600}, 3.5 * 10 / 9600),  # 8N1: start + 8 + stop
    ({"baudrate": 9600, "parity": "E"}, 3.5 * 11 / 9600),
    ({"baudrate": 19200, "stopbits": 2, "parity": "E"}, 3.5 * 12 / 19200),
    ({"baudrate": 115200}, 0.00175),  # the spec's fixed value above 19200 baud
    ({"baudrate": 9600, "frame_gap": 0.04}, 0.04),  # meters that want more
    ({"baudrate": 9600, "framer": "ascii"}, 0.0),
])
def test_inter_frame_silence_is_three_and_a_half_characters(settings, silence):
    device = ModbusDevice(name="d", driver="modbus", port="/dev/ttyS0",
                          points=[{"name": "a", "address": 0}], **settings)
    assert device.silence == pytest.approx(silence)
