"""The keys every device and every point has, and the typed contract between them and the core.

A driver's config model subclasses `DeviceConfig`; its points subclass `PointConfig` (or, for
points whose keys differ, implement `PointModel.to_spec` themselves). The core asks a device
for its points through `DeviceConfig.point_configs()` and builds each point's `PointSpec` with
`to_spec()`: report-by-exception, limits, write checks and the value type therefore reach the
core by a typed method, never by guessing an attribute name (`points`, `fields`, ...).

This module imports no driver machinery, so the driver base class, the registry and the
agent's config can all depend on it without a loop.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.model import PointSpec

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
MAX_NAME = 128  # device and point names are topic levels: bounded, as every topic is


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class PointModel(Strict):
    """The contract of a configured point: a name, and the PointSpec the core normalises by."""

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)

    @abstractmethod
    def to_spec(self) -> PointSpec:
        """Everything the core needs about this point: unit, scale/offset, limits, writable,
        deadband, heartbeat and the raw value's type."""


class PointConfig(PointModel):
    """The keys every point has, whatever the driver: naming and normalisation."""

    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False
    min: float | None = None
    max: float | None = None
    # report-by-exception: publish only on a change beyond the deadband (a number, or "2%" of
    # the last published value), and at least every `heartbeat` seconds (docs/operations.md)
    deadband: float | str | None = None
    heartbeat: float | None = Field(None, gt=0, le=86400)

    @field_validator("deadband")
    @classmethod
    def _deadband_number_or_percent(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, str):  # "2%", or a number that came in as text (env)
            text = value.strip()
            try:
                parsed = float(text.removesuffix("%"))
            except ValueError:
                parsed = -1.0
            if not parsed >= 0:
                raise ValueError(f"'{value}' is not a number or a percentage like '2%'")
            return f"{parsed:g}%" if text.endswith("%") else parsed
        if value is not None and not value >= 0:
            raise ValueError("a deadband cannot be negative")
        return value

    def deadband_spec(self) -> tuple[float | None, bool]:
        """(size, is_percent) as the normaliser wants it."""
        if isinstance(self.deadband, str):
            return float(self.deadband[:-1]), True
        return self.deadband, False

    def value_type(self) -> str | None:
        """The raw value's type name (bool, int8 ... uint64, float32, float64, string), where
        the point declares one: the core checks writes against it and Sparkplug announces it.
        Points with a `type` key of those names override this."""
        return None

    def to_spec(self) -> PointSpec:
        size, percent = self.deadband_spec()
        return PointSpec(self.name, self.unit, self.scale, self.offset, self.writable,
                         self.min, self.max, deadband=size, deadband_percent=percent,
                         heartbeat=self.heartbeat, value_type=self.value_type())


class DeviceConfig(BaseModel):
    """The keys every device has. Drivers subclass this with their own, forbidding extras."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME)
    driver: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    port: str | None = None
    interval: float = Field(1.0, gt=0, le=86400)
    timeout: float = Field(1.0, gt=0, le=600)
    enabled: bool = True
    #: glob patterns on the node name; None runs the device on every node (edge_agent.fleet)
    nodes: list[str] | None = Field(None, min_length=1)
    #: streams: silent (no sample) this many seconds = stale: status error, reconnect.
    #: None: 10 x interval, at least 10 s; 0: never (a device that talks only on events)
    stale_after: float | None = Field(None, ge=0, le=86400)
    #: samples per second published at most; beyond it the latest value of each metric
    #: waits for the next slot (docs/operations.md "Limits"). None: 100/s, or twice the
    #: poll rate if that is higher
    max_rate: float | None = Field(None, gt=0, le=100_000)
    # a device profile supplying points and settings (edge_agent/profiles.py); kept after
    # resolution so the resolved config says where its points came from
    profile: str | None = None
    points_only: list[str] | None = None  # the subset of the profile's points to read

    def point_configs(self) -> Sequence[PointModel]:
        """The device's configured points. A driver whose config lists points (under any key)
        overrides this; the core builds their PointSpecs from it (see edge_agent.driver)."""
        return ()


class SerialDevice(DeviceConfig):
    """A device on a serial port: a path, a pyserial URL or a `usb:VID:PID[:SERIAL]` identity.

    The settings `SerialTransport.open_for` opens the port with; every serial driver's config
    starts from here.
    """

    model_config = ConfigDict(extra="forbid")

    port: str = Field(min_length=1)
    baudrate: int = Field(9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


def share_points(device: DeviceConfig, shared: dict[Any, PointModel]) -> None:
    """Makes the device's point models that equal one already in `shared` that very one.

    A fleet of the same meter (a profile, or one map repeated) configures the same points
    on every unit, and a validated point costs about 0.8 KiB (its model, attribute dict and
    set of the fields given): 247 units x 47 points held 9 MiB of identical copies. Config
    models are values: nothing changes a point after validation (a driver must not), so
    equal ones can be one object. Equal means the same class, the same fields given and
    the same values of the same types (1, 1.0 and True are not confused); a point holding
    anything unhashable (a list) or extra or private state keeps its own model.
    """
    for field, value in device.__dict__.items():
        if not (isinstance(value, list) and value and isinstance(value[0], PointModel)):
            continue
        points = []
        for point in value:
            key = _point_key(point)
            points.append(point if key is None else shared.setdefault(key, point))
        device.__dict__[field] = points


def _point_key(point: PointModel) -> Any:
    if point.__pydantic_extra__ or point.__pydantic_private__:
        return None
    key = (type(point), frozenset(point.model_fields_set),
           tuple((name, type(value), value) for name, value in point.__dict__.items()))
    try:
        hash(key)
    except TypeError:
        return None
    return key
