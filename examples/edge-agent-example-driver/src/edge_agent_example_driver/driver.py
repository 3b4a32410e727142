"""A counter device: the whole driver contract in a few lines.

Everything comes from `edge_agent.sdk`, the one module a driver imports from edge-agent.
`config_model` validates the device's own keys (the agent reports problems with their
path), `points()` describes the one metric the device fixes (a driver with configured points
returns them from its config's `point_configs()` instead), and `poll()` returns raw values
with the time they were read. Scheduling, reconnects, MQTT and units are the core's.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from edge_agent.sdk import (
    DeviceConfig,
    DeviceDisconnected,
    Driver,
    PointSpec,
    Reading,
    Sample,
    now_ms,
)


class CounterDevice(DeviceConfig):
    model_config = ConfigDict(extra="forbid")  # a typo in a key is an error, not ignored

    start: int = 0
    step: int = Field(1, ge=1)
    unit: str | None = None


class CounterDriver(Driver):
    config_model = CounterDevice

    def __init__(self, config: CounterDevice) -> None:
        super().__init__(config)
        self.config: CounterDevice = config
        self._next: int | None = None

    def points(self) -> list[PointSpec]:
        return [PointSpec("count", unit=self.config.unit)]

    async def connect(self) -> None:
        self._next = self.config.start

    async def close(self) -> None:
        self._next = None

    async def poll(self) -> Sample:
        if self._next is None:
            raise DeviceDisconnected("not connected")
        value, self._next = self._next, self._next + self.config.step
        return Sample(now_ms(), [Reading("count", value)])
