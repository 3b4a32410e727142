"""edge_agent.decode: types and word orders against register contents written out by hand.

The register words below are what a device holds (what a Modbus reply carries, word by word);
the expected values were worked out from the IEEE 754 / two's complement bytes, not by the
code under test, so a wrong order or type fails here.
"""

from __future__ import annotations

import math
import struct

import pytest

from edge_agent.decode import (
    ORDERS,
    TYPE_NAMES,
    decode_value,
    encode_value,
    from_big_endian,
    register_count,
    to_big_endian,
)


def words(*registers: int) -> bytes:
    return struct.pack(f">{len(registers)}H", *registers)


# (type, order, register words, value)
TABLE = [
    ("int16", "ABCD", [0xFF85], -123),
    ("int16", "ABCD", [0x7FFF], 32767),
    ("uint16", "ABCD", [0xFF85], 65413),
    # float32 123.456 is 42 F6 E9 79
    ("float32", "ABCD", [0x42F6, 0xE979], 123.456),
    ("float32", "CDAB", [0xE979, 0x42F6], 123.456),
    ("float32", "BADC", [0xF642, 0x79E9], 123.456),
    ("float32", "DCBA", [0x79E9, 0xF642], 123.456),
    # int32 -123456789 is F8 A4 32 EB
    ("int32", "ABCD", [0xF8A4, 0x32EB], -123456789),
    ("int32", "CDAB", [0x32EB, 0xF8A4], -123456789),
    ("int32", "BADC", [0xA4F8, 0xEB32], -123456789),
    ("int32", "DCBA", [0xEB32, 0xA4F8], -123456789),
    ("uint32", "ABCD", [0xDEAD, 0xBEEF], 0xDEADBEEF),
    ("uint32", "CDAB", [0xBEEF, 0xDEAD], 0xDEADBEEF),
    ("uint32", "BADC", [0xADDE, 0xEFBE], 0xDEADBEEF),
    ("uint32", "DCBA", [0xEFBE, 0xADDE], 0xDEADBEEF),
    # 64-bit: CDAB reverses the word order, BADC swaps bytes in each word, DCBA does both
    ("uint64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    ("uint64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    ("uint64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    ("uint64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    # int64 -1234567890123456789 is EE DD EF 0B 82 16 7E EB
    ("int64", "ABCD", [0xEEDD, 0xEF0B, 0x8216, 0x7EEB], -1234567890123456789),
    ("int64", "CDAB", [0x7EEB, 0x8216, 0xEF0B, 0xEEDD], -1234567890123456789),
    ("int64", "BADC", [0xDDEE, 0x0BEF, 0x1682, 0xEB7E], -1234567890123456789),
    ("int64", "DCBA", [0xEB7E, 0x1682, 0x0BEF, 0xDDEE], -1234567890123456789),
    # float64 123456.789 is 40 FE 24 0C 9F BE 76 C9; -2.5 is C0 04 00 .. 00
    ("float64", "ABCD", [0x40FE, 0x240C, 0x9FBE, 0x76C9], 123456.789),
    ("float64", "CDAB", [0x76C9, 0x9FBE, 0x240C, 0x40FE], 123456.789),
    ("float64", "BADC", [0xFE40, 0x0C24, 0xBE9F, 0xC976], 123456.789),
    ("float64", "DCBA", [0xC976, 0xBE9F, 0x0C24, 0xFE40], 123456.789),
    ("float64", "ABCD", [0xC004, 0, 0, 0], -2.5),
]


@pytest.mark.parametrize(("type_name", "order", "registers", "value"), TABLE,
                         ids=[f"{t}-{o}-{v}" for t, o, _, v in TABLE])
def test_decodes_known_register_contents(type_name, order, registers, value):
    assert decode_value(words(*registers), type_name, order) == value


@pytest.mark.parametrize(("type_name", "order", "registers", "value"), TABLE,
                         ids=[f"{t}-{o}-{v}" for t, o, _, v in TABLE])
def test_encodes_to_the_same_register_contents(type_name, order, registers, value):
    assert encode_value(value, type_name, order) == words(*registers)


def test_float32_is_published_with_the_digits_it_holds_not_binary_noise():
    # 0.1 as float32 is 0.100000001490116...; 7 significant digits is what the type carries
    assert decode_value(words(0x3DCC, 0xCCCD), "float32") == 0.1


@pytest.mark.parametrize("registers", [[0x7FC0, 0], [0x7F80, 0], [0xFF80, 0]],
                         ids=["nan", "+inf", "-inf"])
def test_non_finite_float32_decodes_to_none(registers):
    assert decode_value(words(*registers), "float32") is None


def test_non_finite_float64_decodes_to_none():
    assert decode_value(words(0x7FF8, 0, 0, 0), "float64") is None


@pytest.mark.parametrize(("bit", "expected"), [(0, True), (1, False), (3, True), (15, True),
                                               (14, False)])
def test_bool_from_one_bit_of_a_register(bit, expected):
    assert decode_value(words(0b1000_0000_0000_1001), "bool", bit=bit) is expected


@pytest.mark.parametrize(("register", "expected"), [(0, False), (1, True), (0x8000, True)])
def test_bool_from_a_whole_register_is_nonzero(register, expected):
    assert decode_value(words(register), "bool") is expected


def test_string_is_big_endian_characters_cut_at_nul_and_trailing_spaces():
    assert decode_value(b"PUMP-7\x00\x00garbage", "string") == "PUMP-7"
    assert decode_value(b"AB  ", "string") == "AB"


def test_string_encodes_padded_to_whole_registers():
    assert encode_value("ABC", "string", length=3) == b"ABC\x00"
    with pytest.raises(ValueError, match="do not fit"):  # a write is never cut short
        encode_value("TOO LONG", "string", length=4)


@pytest.mark.parametrize(("type_name", "length", "count"), [
    ("bool", 1, 1), ("int16", 1, 1), ("uint16", 1, 1), ("int32", 1, 2), ("uint32", 1, 2),
    ("float32", 1, 2), ("int64", 1, 4), ("uint64", 1, 4), ("float64", 1, 4),
    ("string", 1, 1), ("string", 2, 1), ("string", 3, 2), ("string", 10, 5)])
def test_register_count(type_name, length, count):
    assert register_count(type_name, length) == count


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("size", [2, 4, 8])
def test_reordering_is_its_own_inverse(order, size):
    data = bytes(range(1, size + 1))
    assert from_big_endian(to_big_endian(data, order), order) == data


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_name", [t for t in TYPE_NAMES if t not in ("bool", "string")])
def test_round_trip_at_the_limits_of_each_type(type_name, order):
    limits = {"int16": (-32768, 32767), "uint16": (0, 65535),
              "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
              "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
              "float32": (-3.4e38, 3.4e38), "float64": (-1.7e308, 1.7e308)}[type_name]
    for value in limits:
        decoded = decode_value(encode_value(value, type_name, order), type_name, order)
        assert decoded == value if "float" not in type_name else math.isclose(decoded, value,
                                                                               rel_tol=1e-6)


def test_a_value_too_big_for_its_type_is_refused_when_encoding():
    with pytest.raises(struct.error):
        encode_value(70000, "int16")
