"""Notices serial and USB devices being plugged in, to reconnect waiting devices at once.

Hotplug itself needs nothing from here: a device whose port vanished fails, goes to
`disconnected` and retries on its runner's reconnect backoff, which is capped at a few
seconds (`edge_agent.supervision.device.RECONNECT_MAX_DELAY`), so a replugged device comes
back by itself even without udev (in a container without /run/udev, say). Where pyudev and udev are
available, an `add` event on the tty or usb subsystem wakes every waiting device right away.

pyudev is optional: without it (or without a udev netlink socket) the periodic retry is all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from edge_agent import logs

SUBSYSTEMS = ("tty", "usb", "usb-serial")


class UdevMonitor:
    """Calls `on_added()` on the event loop for every udev `add` of a tty or usb device."""

    def __init__(self, on_added: Callable[[], None]) -> None:
        self.on_added = on_added
        self.log = logs.get("edge_agent.hotplug")
        self._monitor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> bool:
        """Starts watching; False (logged) when udev is not available here."""
        try:
            import pyudev
        except ImportError:
            self.log.info("hotplug_rescan_only", reason="pyudev is not installed")
            return False
        try:
            monitor = pyudev.Monitor.from_netlink(pyudev.Context())
            for subsystem in SUBSYSTEMS:
                monitor.filter_by(subsystem)
            monitor.start()
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(monitor.fileno(), self._readable)
        except Exception as exc:  # no libudev, no netlink in this sandbox...
            self.log.info("hotplug_rescan_only", reason=f"udev unavailable: {exc}")
            return False
        self._monitor = monitor
        self.log.info("hotplug_udev_watching", subsystems=list(SUBSYSTEMS))
        return True

    def _readable(self) -> None:
        added = False
        while True:
            device = self._monitor.poll(timeout=0)
            if device is None:
                break
            if device.action == "add":
                added = True
                self.log.info("hotplug_added", device=device.device_node or device.sys_path)
        if added:
            self.on_added()

    def stop(self) -> None:
        if self._monitor is not None and self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
            self._monitor = None
