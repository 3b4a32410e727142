"""The running devices: one `DeviceRunner` and one task each, started and stopped one by one.

A reload starts, stops and restarts single devices here; hotplug wakes the waiting ones. The
supervisor is also the `DeviceDirectory` outputs read and the lookup of write targets the
downlink uses, so neither needs the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edge_agent import logs, registry, tasks
from edge_agent.config import DeviceConfig
from edge_agent.errors import DriverLoadError
from edge_agent.supervision.device import Deliver, DeviceRunner


class Supervisor:
    """Starts devices with what every runner needs: where readings go (`deliver`), who hears
    of status changes (`on_status`), the poll-duration observer of a device
    (`poll_timer(name)`), and what to forget of a removed device (`forget(name)`)."""

    def __init__(self, *, deliver: Deliver, on_status: Callable[[DeviceRunner], None],
                 poll_timer: Callable[[str], Callable[[float], None]],
                 on_stopped: Callable[[str, bool], None]) -> None:
        self.deliver, self.on_status = deliver, on_status
        self.poll_timer, self.on_stopped = poll_timer, on_stopped
        self.log = logs.get("edge_agent.supervisor")
        self.runners: dict[str, DeviceRunner] = {}
        self.started = 0.0  # loop time at start: the anchor of every device's poll phase
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- DeviceDirectory (outputs) and write-target lookup (downlink) --------------------
    def views(self) -> list[DeviceRunner]:
        return list(self.runners.values())

    def view(self, name: str) -> DeviceRunner | None:
        return self.runners.get(name)

    # -- devices one by one --------------------------------------------------------------
    def start(self, device: DeviceConfig, phase: float = 0.0) -> None:
        try:
            driver, error = registry.load(device.driver)(device), None
        except DriverLoadError as exc:
            driver, error = None, str(exc)
        runner = DeviceRunner(device, driver, error, deliver=self.deliver,
                              on_status=self.on_status,
                              observe_poll=self.poll_timer(device.name),
                              started=self.started, phase=phase)
        self.runners[device.name] = runner
        self._tasks[device.name] = tasks.spawn(runner.run(), f"device-{device.name}", runner.log)

    async def stop(self, name: str, removed: bool) -> None:
        """Stops one device; `removed`: it left the config (else it restarts next)."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.runners.pop(name, None)
        self.on_stopped(name, removed)

    async def stop_all(self) -> None:
        """Cancels every device task; the runners stay (their final status is still told)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def on_port_added(self) -> None:
        """A serial or USB device appeared: every waiting device retries now."""
        for runner in self.runners.values():
            if runner.state.state != "connected":
                runner.wake.set()
