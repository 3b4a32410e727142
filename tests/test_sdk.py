"""The driver SDK's promises: one face, and point metadata by a typed contract."""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import ConfigDict

from edge_agent import sdk
from edge_agent.driver import point_specs
from tests.helpers import REPO


class Channel(sdk.PointConfig):
    type: str = "float32"

    def value_type(self) -> str | None:
        return self.type


class ChannelDevice(sdk.DeviceConfig):
    """A driver config that calls its points `channels`: no attribute name is special."""

    model_config = ConfigDict(extra="forbid")
    channels: list[Channel]

    def point_configs(self) -> list[Channel]:
        return self.channels


class ReadOnly(sdk.Driver):
    config_model = ChannelDevice

    def points(self) -> list[sdk.PointSpec]:  # a metric of the protocol's own
        return [sdk.PointSpec("uptime", "s")]


class Writer(ReadOnly):
    async def write(self, metric: str, value: object) -> None:
        """Accepts every write (the test asks only whether the core lets it through)."""


def device(**point: object) -> ChannelDevice:
    return ChannelDevice(name="d", driver="x", channels=[{"name": "level", **point}])


def test_the_core_builds_point_metadata_from_the_configured_points_whatever_their_key():
    config = device(unit="m", scale=0.1, offset=1, writable=True, min=0, max=9,
                    deadband="2%", heartbeat=60, type="int16")
    specs = point_specs(Writer(config))
    assert list(specs) == ["level", "uptime"]  # configured first: the publishing order
    assert specs["uptime"] == sdk.PointSpec("uptime", "s")
    assert specs["level"] == sdk.PointSpec(
        "level", "m", 0.1, 1.0, True, 0.0, 9.0, deadband=2.0, deadband_percent=True,
        heartbeat=60.0, value_type="int16")


def test_a_driver_that_cannot_write_has_no_writable_points():
    assert Writer(device(writable=True)).can_write
    assert not ReadOnly(device(writable=True)).can_write
    assert point_specs(ReadOnly(device(writable=True)))["level"].writable is False


def test_the_config_decides_and_the_driver_fills_in_what_only_the_device_knows():
    class Described(ReadOnly):  # e.g. units from a DBC file or an OBIS code table
        def points(self) -> list[sdk.PointSpec]:
            return [sdk.PointSpec("level", "ft", scale=3.0, heartbeat=5, value_type="uint8")]

    spec = point_specs(Described(device(deadband=1, type="int16")))["level"]
    assert (spec.unit, spec.scale, spec.deadband, spec.heartbeat, spec.value_type) == (
        "ft", 1.0, 1.0, None, "int16")
    assert point_specs(Described(device(unit="m")))["level"].unit == "m"


def edge_agent_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found |= {n for n in names if n == "edge_agent" or n.startswith("edge_agent.")}
    return found


def test_drivers_import_only_the_sdk_from_the_core():
    sources = [*(REPO / "drivers").rglob("*.py"), *(REPO / "examples").rglob("*.py")]
    assert sources
    offending = {str(p.relative_to(REPO)): edge_agent_imports(p) - {"edge_agent.sdk"}
                 for p in sources}
    assert {p: names for p, names in offending.items() if names} == {}


def test_the_sdk_exports_what_it_lists():
    assert sorted(sdk.__all__) == sorted(set(sdk.__all__))
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name
