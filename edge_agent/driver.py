"""The driver interface: a small hook per protocol, everything else done once in the core.

A driver connects, then either answers `poll()` (the core owns the schedule) or yields from
`stream()` (the device talks on its own). Reconnect, backoff, status, normalisation and
publishing are the runtime's, so drivers stay small and never see MQTT, topics or units.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, NamedTuple, TypeVar

from edge_agent.device_config import DeviceConfig
from edge_agent.model import PointSpec, Sample

T = TypeVar("T")

#: a poll may take the device's `interval` plus this many of its `timeout`s (poll_time_limit)
POLL_LIMIT_TIMEOUTS = 10


class Discovered(NamedTuple):
    """A device found on a line: one line describing it, and a device config that reaches it."""

    description: str
    config: dict[str, Any]


class Driver:
    """Base class of every device driver.

    Subclasses set `config_model` to their pydantic model (a DeviceConfig subclass that forbids
    unknown keys) and implement `connect`, `close` and one of `poll` or `stream`.
    """

    config_model: ClassVar[type[DeviceConfig]] = DeviceConfig
    #: True for drivers whose devices yield readings unasked (NMEA, streaming instruments).
    streaming: ClassVar[bool] = False
    #: True where several devices may share one port (Modbus units on one RS-485 line).
    shares_port: ClassVar[bool] = False
    #: True where `points()` is complete only after `connect()` (an M-Bus meter's records are
    #: learned from its first answer): the core then re-reads them after every connect.
    learns_points: ClassVar[bool] = False

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        #: problems survived without failing a poll (a bad frame, a refused block), by kind;
        #: the runtime counts these with the device's errors (`edge_agent_read_errors`)
        self.errors: Counter[str] = Counter()

    def points(self) -> list[PointSpec]:
        """Metrics this driver defines itself, beyond the configured points.

        Configured points reach the core through `config.point_configs()` (see
        `point_specs`); override this only for metrics the protocol fixes (NMEA's position)
        or derives, which no point config describes.
        """
        return []

    @property
    def can_write(self) -> bool:
        """True when this driver implements `write`; otherwise no point of it is writable."""
        return type(self).write is not Driver.write

    async def connect(self) -> None:
        """Opens the transport; raises DeviceError when the device cannot be reached."""

    async def close(self) -> None:
        """Releases the transport; must be safe to call when not connected."""

    async def poll(self) -> Sample:
        """Reads every point once. Raises DeviceError when the device fails to answer."""
        raise NotImplementedError

    def stream(self) -> AsyncIterator[Sample]:
        """Yields samples as the device sends them, until the transport fails."""
        raise NotImplementedError

    def poll_time_limit(self) -> float:
        """The longest one `poll()` may take: past it the core cancels the poll, counts a
        timeout and reconnects (a driver that hangs never leaves its device "connected").

        The default, `interval` + 10 x `timeout`, leaves room for several requests, retries
        and waiting for a shared line; a driver whose readout is longer by design (a meter
        read at 300 baud) says so here.
        """
        return self.config.interval + POLL_LIMIT_TIMEOUTS * self.config.timeout

    async def write(self, metric: str, value: Any) -> None:
        """Writes a raw (already unscaled) value to a writable point."""
        raise NotImplementedError(f"driver '{self.config.driver}' does not support writes")

    @classmethod
    def discover(cls, port: str, **options: Any) -> list[Discovered]:
        """The devices this driver finds on the line at `port`, for `edge-agent scan`.

        Blocking and read only: a driver whose protocol can find its devices (an M-Bus
        address sweep) overrides this; the core knows the driver only by its name."""
        raise NotImplementedError("this driver cannot search a line for devices")


class BlockingDriver(Driver):
    """For drivers built on blocking libraries (pyusb, blocking serial reads).

    Each device gets one thread of its own, so a stuck read never stalls the event loop or
    another device, and calls into the library are never concurrent for one device.
    """

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dev-{config.name}")

    async def in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    async def close(self) -> None:
        await super().close()


def point_specs(driver: Driver) -> dict[str, PointSpec]:
    """Every metric of a device with how the core normalises it, by name.

    Built from the device's configured points (`DeviceConfig.point_configs()`, each point's
    `to_spec()`), so deadband, heartbeat, limits, writable and the value type hold for every
    driver whatever its config calls its list; then the metrics the driver adds itself
    (`Driver.points()`). For a metric in both, the config decides and the driver fills in
    what only the device knows and the config left open: the unit (from a DBC or an OBIS
    table) and the value type. A driver that cannot write has no writable points.
    """
    own = {spec.name: spec for spec in driver.points()}
    specs: dict[str, PointSpec] = {}
    for point in driver.config.point_configs():
        spec = point.to_spec()
        known = own.get(spec.name)
        if known is not None:
            spec = dataclasses.replace(
                spec, unit=known.unit if spec.unit is None else spec.unit,
                value_type=spec.value_type or known.value_type)
        if spec.writable and not driver.can_write:
            spec = dataclasses.replace(spec, writable=False)
        specs[spec.name] = spec
    for name, spec in own.items():  # after the configured ones, in the driver's order
        specs.setdefault(name, spec)
    return specs
