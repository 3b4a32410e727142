"""A serial port read through the event loop: the transport every serial driver shares.

Why the event loop and not a thread (BlockingDriver): a line instrument spends nearly all its
time silent, then sends a few dozen bytes. With `loop.add_reader` on the port's file
descriptor the kernel wakes the loop only when bytes arrive and one `os.read` takes all of
them: no thread per device, no blocked read polling a timeout, no cross-thread hand-off
(a self-pipe write and a GIL switch) per chunk. pyserial opens POSIX ports non-blocking, so
reading its descriptor directly is safe. Transports without a descriptor (pyserial URLs such
as `rfc2217://` or `loop://`) fall back to one reader thread per port.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from typing import Any

import serial

from edge_agent.device_config import SerialDevice
from edge_agent.errors import DeviceDisconnected
from edge_agent.ports import resolve_port

#: received bytes held for a consumer that has fallen behind; past this the oldest go
MAX_PENDING = 1 << 20


class SerialTransport:
    """One open serial port: `read()` what arrived, `write()` a command."""

    def __init__(self, port: str, *, baudrate: int = 9600, bytesize: int = 8,
                 parity: str = "N", stopbits: float = 1) -> None:
        self.port = port
        self._settings: dict[str, Any] = {"baudrate": baudrate, "bytesize": bytesize,
                                          "parity": parity, "stopbits": stopbits}
        self._serial: Any = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None
        self.dropped_bytes = 0  # since open, for diagnostics
        self._unreported = 0

    @classmethod
    async def open_for(cls, config: SerialDevice) -> SerialTransport:
        """Opens the port of a device config with serial line keys (port, baudrate, ...)."""
        transport = cls(config.port, baudrate=config.baudrate, bytesize=config.bytesize,
                        parity=config.parity, stopbits=config.stopbits)
        await transport.open()
        return transport

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        path = resolve_port(self.port)  # usb:VID:PID[:SERIAL] -> the tty it has now
        try:
            self._serial = serial.serial_for_url(path, timeout=0.2, **self._settings)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceDisconnected(f"cannot open {path}: {exc}") from None
        self._pending.clear()
        self._error = None
        try:
            self._fd = self._serial.fileno()
        except (OSError, AttributeError):  # io.UnsupportedOperation is an OSError
            self._fd = None
        if self._fd is not None:
            os.set_blocking(self._fd, False)
            self._loop.add_reader(self._fd, self._on_readable)
        else:
            self._thread = threading.Thread(target=self._read_in_thread, daemon=True,
                                            name=f"serial-{path}")
            self._thread.start()

    # -- receiving ---------------------------------------------------------------------
    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:  # closed between the loop's wake-up and this callback
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the device (or the pty's other side) went away
            self._fail(DeviceDisconnected(f"{self.port}: {exc.strerror or exc}"))
            return
        if not data:
            self._fail(DeviceDisconnected(f"{self.port}: end of file"))
            return
        self._deliver(data)

    def _read_in_thread(self) -> None:
        ser, loop = self._serial, self._loop
        assert loop is not None  # set by open() before the thread starts
        while self._serial is ser:
            try:
                data = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                if self._serial is ser:
                    loop.call_soon_threadsafe(self._fail, DeviceDisconnected(str(exc)))
                return
            if data:
                loop.call_soon_threadsafe(self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        pending = self._pending
        pending += data
        if len(pending) > MAX_PENDING:
            excess = len(pending) - MAX_PENDING
            del pending[:excess]
            self.dropped_bytes += excess
            self._unreported += excess
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, timeout: float | None = None) -> bytes:
        """Every byte received since the last call; b"" when `timeout` seconds pass silently.

        Raises DeviceDisconnected once the port has failed (after what arrived before it).
        """
        if not self._pending and self._error is None:
            if self._loop is None:
                raise DeviceDisconnected("not connected")
            waiter = self._waiter = self._loop.create_future()
            timer = (self._loop.call_later(timeout, self._wake) if timeout is not None
                     else None)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            return data
        if self._error is not None:
            raise self._error
        return b""

    def take_dropped(self) -> int:
        """Bytes dropped unread since the last call (the consumer fell MAX_PENDING behind)."""
        dropped, self._unreported = self._unreported, 0
        return dropped

    # -- sending -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._serial is None:
            raise DeviceDisconnected("not connected")
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            raise DeviceDisconnected(f"{self.port}: write failed: {exc}") from None

    def discard_input(self) -> None:
        """Forgets unread input, so a reply is never confused with an earlier line."""
        self._pending.clear()
        if self._serial is not None:
            with contextlib.suppress(serial.SerialException, OSError, io.UnsupportedOperation):
                self._serial.reset_input_buffer()

    def close(self) -> None:
        ser, self._serial = self._serial, None
        if self._fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._fd = None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()
        if self._thread is not None:
            self._thread.join(1)
            self._thread = None
        self._fail(DeviceDisconnected("closed"))
