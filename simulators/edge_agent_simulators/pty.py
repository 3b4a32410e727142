"""A pseudo-terminal as a simulated serial device: the slave's path is the port a driver
opens, the simulator reads and writes the master side from the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable


class Pty:
    """Opens a raw pty; `on_data` (if given) receives whatever the driver writes.

    Writes never block: when nobody reads, the pty's buffer fills and output is dropped (and
    counted), as a real device's output is lost when no one listens.
    """

    def __init__(self, on_data: Callable[[bytes], None] | None = None) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)
        self._loop = asyncio.get_running_loop()
        self.dropped = 0
        if on_data is not None:
            self._loop.add_reader(self.master, self._readable, on_data)

    def _readable(self, on_data: Callable[[bytes], None]) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        on_data(data)

    def write(self, data: bytes) -> bool:
        try:
            os.write(self.master, data)
        except OSError:  # BlockingIOError included: nobody is reading
            self.dropped += len(data)
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.master)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
