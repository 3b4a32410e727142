"""drivers/modbus/codec.py: a block's registers to readings, fast path and general path alike."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.model import BAD, GOOD, Reading
from edge_agent_drivers.modbus.codec import BlockDecoder
from edge_agent_drivers.modbus.config import ModbusPoint
from edge_agent_drivers.modbus.plan import plan
from tests.test_decode import TABLE


@pytest.mark.parametrize(("type_name", "order", "registers", "value"), TABLE,
                         ids=[f"{t}-{o}-{v}" for t, o, _, v in TABLE])
def test_a_value_inside_a_block_decodes_like_the_table(type_name, order, registers, value):
    # the value sits at address 3 of a block starting at 0, between unrelated registers
    points = [ModbusPoint(name="before", address=0, type="uint16"),
              ModbusPoint(name="v", address=3, type=type_name, order=order),
              ModbusPoint(name="after", address=3 + len(registers), type="int16")]
    (block,) = plan(points, max_gap=5)
    words = [0x1234, 0xFFFF, 0xFFFF, *registers, 0xFFFE]
    readings = {r.metric: r for r in BlockDecoder(block).decode(words)}
    assert readings["v"] == Reading("v", value, GOOD)
    assert readings["before"] == Reading("before", 0x1234, GOOD)
    assert readings["after"] == Reading("after", -2, GOOD)


def test_bits_of_a_register_and_bit_tables():
    points = [ModbusPoint(name=f"b{bit}", address=0, type="bool", bit=bit) for bit in (0, 1, 15)]
    (block,) = plan(points)
    readings = BlockDecoder(block).decode([0x8001])
    assert {r.metric: r.value for r in readings} == {"b0": True, "b1": False, "b15": True}
    coils = [ModbusPoint(name=f"c{a}", table="coil", address=a, type="bool") for a in (0, 2, 9)]
    (block,) = plan(coils, max_gap=1)
    # pymodbus pads bit replies to whole bytes
    bits = [True, True, False, False, False, False, False, False,
            False, True, False, False, False, False, False, False]
    readings = BlockDecoder(block).decode(bits)
    assert {r.metric: r.value for r in readings} == {"c0": True, "c2": False, "c9": True}


def test_strings_decode_from_registers():
    (block,) = plan([ModbusPoint(name="tag", address=0, type="string", length=7)])
    words = list(struct.unpack(">4H", b"PUMP-7\x00\x00"))
    assert BlockDecoder(block).decode(words) == [Reading("tag", "PUMP-7", GOOD)]


def test_nan_is_a_bad_reading_not_a_good_null():
    (block,) = plan([ModbusPoint(name="f", address=0, type="float32"),
                     ModbusPoint(name="g", address=2, type="float32", order="CDAB")])
    readings = BlockDecoder(block).decode([0x7FC0, 0, 0, 0x7FC0])
    assert readings == [Reading("f", None, BAD), Reading("g", None, BAD)]


def test_failed_gives_a_bad_reading_for_every_point_of_the_block():
    points = [ModbusPoint(name=f"p{a}", address=a) for a in range(3)]
    (block,) = plan(points)
    assert BlockDecoder(block).failed() == [Reading(f"p{a}", None, BAD) for a in range(3)]


# -- hostile responses: any length, any words (issue #18) -----------------------------------
_POINT = st.fixed_dictionaries({
    "address": st.integers(0, 30),
    "type": st.sampled_from(["uint16", "int16", "uint32", "int32", "uint64", "int64", "float32",
                             "float64", "bool", "string"]),
    "order": st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]),
    "table": st.sampled_from(["holding", "input"]),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(_POINT, min_size=1, max_size=6),
       st.lists(st.integers(0, 0xFFFF), max_size=40), st.booleans())
def test_a_response_of_any_length_gives_one_reading_per_point_and_never_raises(
        points, words, as_bits):
    models = [ModbusPoint(name=f"p{i}", **p, length=3) for i, p in enumerate(points)]
    if as_bits:
        models = [ModbusPoint(name=f"p{i}", address=p["address"], table="coil")
                  for i, p in enumerate(points)]
    for block in plan(models):
        decoder = BlockDecoder(block)
        readings = decoder.decode(words)
        assert [r.metric for r in readings] == [p.name for _, p in block.points]
        for reading, (_, point) in zip(readings, block.points, strict=True):
            if point.address - block.address + point.registers > len(words):
                assert (reading.value, reading.quality) == (None, BAD)
            elif reading.quality == GOOD:
                assert reading.value is not None
                if isinstance(reading.value, float):
                    assert math.isfinite(reading.value)


@pytest.mark.parametrize("words", [[1, 2, "x"], [1, 70000, 3], [None] * 3, [-1, 0, 0]])
def test_words_that_are_not_16_bit_make_the_block_bad_not_an_exception(words):
    points = [ModbusPoint(name="a", address=0, type="float32"),
              ModbusPoint(name="b", address=2, type="uint16")]
    (block,) = plan(points)
    readings = BlockDecoder(block).decode(words)
    assert {r.metric: (r.value, r.quality) for r in readings} == {
        "a": (None, BAD), "b": (None, BAD)}
