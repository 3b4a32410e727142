"""The line codec and config: regex, delimited and JSON lines; types, maps, quality; fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import ConfigError, validate
from edge_agent.model import BAD, GOOD, UNCERTAIN
from edge_agent.sdk import LineSplitter
from edge_agent_drivers.line.codec import LineError, LineParser
from edge_agent_drivers.line.config import LineDevice
from edge_agent_simulators.line import SICS_PATTERN, SicsScale


def parser(**keys) -> LineParser:
    return LineParser(LineDevice(name="d", driver="line", port="/dev/null", **keys))


SICS = {"format": "regex", "pattern": SICS_PATTERN,
        "fields": [{"name": "weight", "type": "float", "unit": "kg"},
                   {"name": "stable", "type": "bool", "map": {"S": True, "D": False}}],
        "quality": [{"source": "stable", "good": ["S"]},
                    {"source": "unit", "good": ["kg"], "otherwise": "bad"}]}


@pytest.mark.parametrize(("line", "weight", "stable", "quality"), [
    ("S S     12.345 kg", 12.345, True, GOOD),
    ("S D      3.100 kg", 3.1, False, UNCERTAIN),
    ("S S     -0.002 kg", -0.002, True, GOOD),
    ("S S      +7.5 kg", 7.5, True, GOOD),
    ("S S     12.345 lb", 12.345, True, BAD),  # the scale was switched to pounds
])
def test_sics_weights_carry_sign_stability_and_unit_checks(line, weight, stable, quality):
    readings = {r.metric: r for r in parser(**SICS).parse(line)}
    assert readings["weight"].value == weight and readings["stable"].value is stable
    assert readings["weight"].quality == quality


@pytest.mark.parametrize("line", ["S I", "S +", "ES", "I4 A \"0123456789\""])
def test_sics_status_answers_are_not_weights(line):
    with pytest.raises(LineError) as caught:
        parser(**SICS).parse(line)
    assert caught.value.kind == "no_match"


def test_the_scale_simulator_speaks_the_format_the_pattern_reads():
    scale = SicsScale(cycle=1.0)
    seen = set()
    for step in range(100):
        weight, stable = scale.reading(scale.start + step / 100)
        line = f"S {'S' if stable else 'D'} {weight:>10.3f} kg"
        got = {r.metric: r.value for r in parser(**SICS).parse(line)}
        assert got == {"weight": weight, "stable": stable}
        seen.add(stable)
    assert seen == {True, False}


CSV = {"format": "delimited", "delimiter": ",", "ignore": "^[A-Za-z]",
       "fields": [{"name": "t", "source": 0, "unit": "Cel"}, {"name": "n", "source": 1,
                                                              "type": "int"},
                  {"name": "ok", "source": 2, "type": "bool"}, {"name": "id", "source": 3,
                                                                "type": "string"}]}


def test_delimited_columns_are_typed_and_a_bad_column_is_bad_alone():
    p = parser(**CSV)
    assert [tuple(r) for r in p.parse("21.5, 7,yes,abc")] == [
        ("t", 21.5, GOOD), ("n", 7, GOOD), ("ok", True, GOOD), ("id", "abc", GOOD)]
    assert [r.quality for r in p.parse("21.5,x7,1,abc")] == [GOOD, BAD, GOOD, GOOD]
    with pytest.raises(LineError, match="columns"):
        p.parse("21.5,7")
    assert p.ignored("temperature,n,ok,id") and not p.ignored("21.5,7,1,a")


def test_whitespace_delimiter_splits_on_runs_of_blanks():
    p = parser(format="delimited", delimiter=None,
               fields=[{"name": "a", "source": 1}, {"name": "b", "source": 2}])
    assert [r.value for r in p.parse("  ID7   1.5\t\t-2e3 ")] == [1.5, -2000.0]


def test_json_lines_read_nested_keys_and_missing_ones_are_bad():
    p = parser(format="json", fields=[{"name": "t", "source": "env.t", "unit": "Cel"},
                                      {"name": "rssi", "type": "int"}])
    assert [tuple(r) for r in p.parse('{"env": {"t": 20.25}, "rssi": -61}')] == [
        ("t", 20.25, GOOD), ("rssi", -61, GOOD)]
    assert [r.quality for r in p.parse('{"env": {}, "rssi": 3.5}')] == [BAD, BAD]
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(LineError, match="JSON"):
            p.parse(bad)


@pytest.mark.parametrize(("device", "problem"), [
    ({"format": "regex", "fields": [{"name": "a"}]}, "needs a pattern"),
    ({"format": "regex", "pattern": "(?P<x>.)", "fields": [{"name": "a"}]},
     "no group named a"),
    ({"format": "regex", "pattern": "(", "fields": [{"name": "a"}]}, "regular expression"),
    ({"format": "delimited", "fields": [{"name": "a"}]}, "column numbers"),
    ({"mode": "poll", "format": "json", "fields": [{"name": "a"}]}, "needs a command"),
    ({"encoding": "klingon", "format": "json", "fields": [{"name": "a"}]}, "encoding"),
    ({"format": "json", "fields": [{"name": "a", "type": "float33"}]}, "float33"),
])
def test_config_problems_name_the_field(device, problem):
    data = {"devices": [{"name": "d", "driver": "line", "port": "/dev/ttyS0", **device}]}
    with pytest.raises(ConfigError) as caught:
        validate(data)
    assert any(line.startswith("devices[0]") and problem in line
               for line in caught.value.problems), caught.value.problems


def test_escaped_terminators_and_commands_written_in_single_quotes_are_unescaped():
    device = LineDevice(name="d", driver="line", port="p", mode="poll", command="SI\\r\\n",
                        terminator="\\r", format="json", fields=[{"name": "a"}])
    assert device.command == "SI\r\n" and device.terminator == "\r"


def test_splitter_handles_crlf_split_reads_and_drops_overlong_noise():
    splitter = LineSplitter(b"\n", max_line=16)
    assert splitter.feed(b"1,2\r") == []
    assert splitter.feed(b"\n3,4\r\n\r\n5") == [b"1,2", b"3,4"]
    assert splitter.feed(b"x" * 40) == [] and splitter.overflows == 1
    assert splitter.feed(b"\n6\n") == [b"6"]
    crlf = LineSplitter(b"\r\n")
    assert crlf.feed(b"1\r") == [] and crlf.feed(b"\n2\r\n") == [b"1", b"2"]


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_line_error_for_every_format(text):
    for keys in (SICS, CSV, {"format": "json", "fields": [{"name": "a", "source": "x.y"}]}):
        try:
            readings = parser(**keys).parse(text)
        except LineError:
            continue
        assert all(r.value is not None or r.quality == BAD for r in readings)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=30), max_size=10))
def test_splitter_never_returns_a_terminator_or_an_overlong_line(chunks):
    splitter = LineSplitter(b"\r\n", max_line=20)
    for chunk in chunks:
        for line in splitter.feed(chunk):
            assert b"\r\n" not in line and 0 < len(line) <= 20
