"""Hostile device input on a line instrument: parser failures stay one bad line, buffers stay
bounded, and nothing malformed is published as good (issue #18, item 6)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.framing import LineSplitter
from edge_agent.model import BAD, GOOD
from edge_agent.serial_transport import MAX_PENDING, SerialTransport
from edge_agent_drivers.line.codec import INT_RANGE, LineError, LineParser
from edge_agent_drivers.line.config import LineDevice
from edge_agent_drivers.line.driver import LineDriver
from edge_agent_simulators.pty import Pty

JSON_KEYS = {"format": "json", "fields": [{"name": "a"}, {"name": "n", "type": "int"}]}


def json_parser() -> LineParser:
    return LineParser(LineDevice(name="d", driver="line", port="/dev/null", **JSON_KEYS))


@pytest.mark.parametrize("line", ["[" * 3000, "{\"a\":" * 5000, "[" * 100_000 + "]" * 100_000])
def test_json_nested_too_deep_is_one_bad_line_not_a_crash(line):
    with pytest.raises(LineError) as caught:
        json_parser().parse(line)
    assert caught.value.kind == "json"


@pytest.mark.parametrize(("text", "a", "n"), [
    ('{"a": NaN, "n": 1}', None, 1),
    ('{"a": Infinity, "n": 1}', None, 1),
    ('{"a": 1e999, "n": 1.5}', None, None),
    ('{"a": "1_000", "n": "1_000"}', None, None),
    ('{"a": " inf", "n": 1e30}', None, None),
    ('{"a": "nan", "n": ' + "9" * 30 + "}", None, None),
    ('{"a": "1.5E-05", "n": "-42"}', 1.5e-05, -42),
])
def test_numbers_are_read_strictly_and_a_bad_one_is_bad_alone(text, a, n):
    got = {r.metric: r for r in json_parser().parse(text)}
    for metric, expected in (("a", a), ("n", n)):
        assert got[metric].value == expected
        assert got[metric].quality == (GOOD if expected is not None else BAD)


def test_an_overlong_line_is_dropped_whole_and_its_tail_never_read_as_a_line():
    splitter = LineSplitter(b"\n", max_line=16)
    assert splitter.feed(b"1,2,3," * 10) == [] and splitter.overflows == 1
    assert splitter.feed(b"4,5,6," * 10) == []  # still the same line: not counted again
    assert splitter.feed(b"7,8\n9,10\n") == [b"9,10"] and splitter.overflows == 1
    crlf = LineSplitter(b"\r\n", max_line=8)
    assert crlf.feed(b"x" * 20 + b"\r") == [] and crlf.feed(b"\nok\r\n") == [b"ok"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30), st.sampled_from([b"\n", b"\r\n", b";"]))
def test_the_splitter_holds_at_most_max_line_bytes_whatever_arrives(chunks, terminator):
    splitter = LineSplitter(terminator, max_line=32)
    for chunk in chunks:
        for line in splitter.feed(chunk):
            assert terminator not in line and 0 < len(line) <= 32
        assert len(splitter._buffer) <= 32


_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["a", "n", "x"]), children, max_size=3), max_leaves=10)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_JSON_VALUE.map(lambda v: __import__("json").dumps(v)), st.text(max_size=60)))
def test_a_good_number_is_finite_and_fits_64_bits_whatever_the_line(text):
    try:
        readings = json_parser().parse(text)
    except LineError:
        return
    for reading in readings:
        if reading.quality == GOOD:
            assert reading.value is not None
            if reading.metric == "a":
                assert isinstance(reading.value, float) and math.isfinite(reading.value)
            else:
                assert INT_RANGE[0] <= reading.value <= INT_RANGE[1]


def test_one_read_with_a_bomb_between_two_good_lines_keeps_both_and_counts_one():
    """Through a real pty: the driver's stream survives and loses nothing around the bad line;
    a device that never sends a line end costs at most `max_line` bytes of buffer."""

    async def scenario() -> None:
        pty = Pty()

        async def send(data: bytes) -> None:  # every byte, however slowly the driver reads
            while data:
                try:
                    data = data[os.write(pty.master, data):]
                except BlockingIOError:
                    await asyncio.sleep(0.001)

        driver = LineDriver(LineDevice(name="d", driver="line", port=pty.path, max_line=4096,
                                       **JSON_KEYS))
        await driver.connect()
        try:
            stream = driver.stream()
            await send(b'{"a": 1, "n": 1}\n' + b"[" * 3000 + b'\n{"a": 2, "n": 2}\n')
            first = await asyncio.wait_for(anext(stream), 10)
            second = await asyncio.wait_for(anext(stream), 10)
            assert [r.value for r in first.readings] == [1.0, 1]
            assert [r.value for r in second.readings] == [2.0, 2]
            assert driver.counters["json"] == 1
            reading = asyncio.ensure_future(anext(stream))
            await send(b"9" * (256 * 1024))  # a device that never ends its line
            await send(b'\n{"a": 3, "n": 3}\n')
            third = await asyncio.wait_for(reading, 10)
            assert [r.value for r in third.readings] == [3.0, 3]
            assert driver.counters["overflow"] == 1
            assert len(driver._splitter._buffer) <= 4096
            await stream.aclose()
        finally:
            await driver.close()
            pty.close()

    asyncio.run(scenario())


def test_a_device_faster_than_its_reader_costs_at_most_max_pending_and_is_counted():
    async def scenario() -> None:
        pty = Pty()
        transport = SerialTransport(pty.path)
        await transport.open()
        try:
            sent = 0
            while sent < MAX_PENDING + 512 * 1024:  # nobody calls read() meanwhile
                with contextlib.suppress(BlockingIOError):
                    sent += os.write(pty.master, b"x" * 65536)
                await asyncio.sleep(0)
            data = await transport.read(1)
            assert len(data) <= MAX_PENDING
            dropped = transport.take_dropped()
            assert dropped > 0 and len(data) + dropped <= sent
            assert transport.take_dropped() == 0  # reported once
        finally:
            transport.close()
            pty.close()

    asyncio.run(scenario())
