"""One M-Bus line (a serial master on one port) shared by every meter configured on it.

A line carries one exchange at a time: the meters' devices take turns through the line's lock,
each readout (select, requests, all its telegrams) being one turn. The serial port is opened
by the first device on the line and closed by the last.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import serial

from edge_agent.sdk import DeviceDisconnected, DeviceTimeout, ProtocolError, resolve_port
from edge_agent_drivers.mbus import frames


class MbusLine:
    def __init__(self, path: str, settings: dict[str, Any]) -> None:
        self.path, self.settings = path, settings
        self.lock = threading.Lock()
        self.users = 0
        self._serial: Any = None

    def open(self) -> None:
        if self._serial is None:
            try:
                self._serial = serial.serial_for_url(self.path, timeout=0.05, **self.settings)
            except (serial.SerialException, OSError, ValueError) as exc:
                raise DeviceDisconnected(f"cannot open {self.path}: {exc}") from None

    def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()

    def exchange(self, request: bytes, timeout: float, *, expect: str,
                 on_fault: Any = None) -> frames.Frame:
        """Sends `request` and returns the first answer frame of kind `expect`.

        Frames that fail a check are reported to `on_fault(kind, message)` and skipped; an
        echo of the request (some level converters echo) is skipped too. DeviceTimeout when
        nothing fitting arrives within `timeout` seconds of silence."""
        ser = self._serial
        if ser is None:
            raise DeviceDisconnected("not connected")
        reader = frames.FrameReader()
        try:
            ser.reset_input_buffer()
            ser.write(request)
            ser.flush()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    frame = reader.next()
                except frames.FrameError as exc:
                    if on_fault is not None:
                        on_fault(exc.kind, str(exc))
                    raise ProtocolError(str(exc)) from None
                if frame is not None:
                    if frame.raw == request:
                        continue  # our own request, echoed
                    if frame.kind == expect:
                        return frame
                    raise ProtocolError(f"expected a {expect} frame, got {frame.kind}")
                if time.monotonic() > deadline:
                    if reader.buffer or reader.skipped:
                        if on_fault is not None:
                            on_fault("garbled", "an answer that is no frame")
                        raise ProtocolError("garbled answer (a collision or noise)")
                    raise DeviceTimeout("no answer")
                data = ser.read(max(1, ser.in_waiting))
                if data:
                    reader.feed(data)
                    deadline = time.monotonic() + timeout
        except (serial.SerialException, OSError) as exc:
            raise DeviceDisconnected(f"{self.path}: {exc}") from None

    def send(self, request: bytes) -> None:
        """Sends without waiting for an answer (a SND_NKE to deselect)."""
        ser = self._serial
        if ser is None:
            raise DeviceDisconnected("not connected")
        try:
            ser.write(request)
            ser.flush()
        except (serial.SerialException, OSError) as exc:
            raise DeviceDisconnected(f"{self.path}: {exc}") from None


_LINES: dict[str, MbusLine] = {}
_REGISTRY_LOCK = threading.Lock()


def acquire(port: str, settings: dict[str, Any]) -> MbusLine:
    path = resolve_port(port)
    with _REGISTRY_LOCK:
        line = _LINES.get(path)
        if line is None:
            line = _LINES[path] = MbusLine(path, settings)
        line.users += 1
    try:
        with line.lock:
            line.open()
    except Exception:
        release(line)
        raise
    return line


def release(line: MbusLine) -> None:
    with _REGISTRY_LOCK:
        line.users -= 1
        if line.users > 0:
            return
        _LINES.pop(line.path, None)
    with line.lock:
        line.close()
