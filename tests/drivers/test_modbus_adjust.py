"""Per-poll fix-ups of raw Modbus values: "not available" markers and SunSpec scale factors."""

from __future__ import annotations

import pytest

from edge_agent import config as config_mod
from edge_agent.errors import ConfigError
from edge_agent.model import BAD, GOOD, UNCERTAIN, Reading
from edge_agent_drivers.modbus.adjust import Adjuster
from edge_agent_drivers.modbus.config import ModbusPoint


def points(*specs: dict) -> list[ModbusPoint]:
    return [ModbusPoint(**spec) for spec in specs]


ADJUSTER = Adjuster(points(
    {"name": "a", "address": 0, "scale_factor": "a_sf", "invalid": [65535]},
    {"name": "a_sf", "address": 1, "type": "int16", "invalid": [-32768]},
    {"name": "w", "address": 2, "type": "int16", "scale_factor": "w_sf"},
    {"name": "w_sf", "address": 3, "type": "int16"},
    {"name": "plain", "address": 4}))


def values(readings: list[Reading]) -> dict:
    return {r.metric: (r.value, r.quality) for r in readings}


def test_scale_factor_is_a_power_of_ten_read_in_the_same_poll():
    out = values(ADJUSTER.apply([Reading("a", 1234), Reading("a_sf", -2), Reading("w", 82),
                                 Reading("w_sf", 2), Reading("plain", 7)]))
    assert out == {"a": (12.34, GOOD), "a_sf": (-2, GOOD), "w": (8200, GOOD),
                   "w_sf": (2, GOOD), "plain": (7, GOOD)}


@pytest.mark.parametrize(("readings", "expected"), [
    ([Reading("a", 65535), Reading("a_sf", -2)], (None, BAD)),  # not implemented
    ([Reading("a", 1234), Reading("a_sf", -32768)], (None, BAD)),  # factor not implemented
    ([Reading("a", 1234), Reading("a_sf", 11)], (None, BAD)),  # not a SunSpec factor
    ([Reading("a", 1234), Reading("a_sf", None, BAD)], (None, BAD)),  # factor unread
    ([Reading("a", 1234), Reading("a_sf", 1, UNCERTAIN)], (12340, UNCERTAIN)),
])
def test_a_value_is_never_good_without_a_good_factor_or_when_marked_unavailable(
        readings, expected):
    assert values(ADJUSTER.apply(readings))["a"] == expected


def test_devices_without_markers_or_factors_are_not_adjusted():
    assert not Adjuster(points({"name": "x", "address": 0})).needed


@pytest.mark.parametrize(("point", "message"), [
    ({"name": "v", "address": 0, "scale_factor": "missing"}, "scale_factor must name another"),
    ({"name": "v", "address": 0, "scale_factor": "u"}, "scale_factor must name another"),
    ({"name": "v", "address": 0, "scale_factor": "s", "writable": True}, "cannot be writable"),
])
def test_bad_scale_factor_references_are_config_errors(point, message):
    device = {"name": "d", "driver": "modbus", "port": "tcp://h:502", "points": [
        point, {"name": "u", "address": 1}, {"name": "s", "address": 2, "type": "int16"}]}
    with pytest.raises(ConfigError) as caught:
        config_mod.validate({"devices": [device]}, environ={})
    assert any(p.startswith("devices[0]") and message in p for p in caught.value.problems)
