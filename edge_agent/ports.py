"""Where devices are found: serial ports by USB identity, and the pyusb backend.

A tty name (`/dev/ttyUSB0`) follows plug order and changes after a replug or reboot; the
USB identity of the adapter does not. `resolve_port` turns `usb:VID:PID[:SERIAL]` into the
tty the device has *now*, so drivers call it at every (re)connect. Anything else (a path,
`/dev/serial/by-id/...`, a pyserial URL such as `socket://` or `loop://`) passes unchanged.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from typing import Any

from serial.tools import list_ports

from edge_agent.errors import DeviceDisconnected, DeviceError

USB_PREFIX = "usb:"
#: env naming `module:callable` that returns a usb.backend.IBackend (simulated devices)
USB_BACKEND_ENV = "EDGE_AGENT_USB_BACKEND"


def parse_usb_identity(port: str) -> tuple[int, int, str | None]:
    """`usb:0403:6001[:A50285BI]` -> (0x0403, 0x6001, 'A50285BI'); ValueError when malformed."""
    parts = port[len(USB_PREFIX):].split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"'{port}' is not usb:VID:PID[:SERIAL] (hex ids, e.g. usb:0403:6001)")
    try:
        vid, pid = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        raise ValueError(f"'{port}': VID and PID must be hex, e.g. usb:0403:6001") from None
    if not (0 <= vid <= 0xFFFF and 0 <= pid <= 0xFFFF):
        raise ValueError(f"'{port}': VID and PID are 16-bit")
    serial = parts[2] if len(parts) == 3 and parts[2] else None
    return vid, pid, serial


def resolve_port(port: str) -> str:
    """The device path to open for `port`, looked up afresh on every call.

    Raises DeviceDisconnected when no attached port matches (the device is unplugged: the
    runtime retries), DeviceError when several do (a serial number is needed to choose).
    """
    if not port.startswith(USB_PREFIX):
        return port
    try:
        vid, pid, serial = parse_usb_identity(port)
    except ValueError as exc:
        raise DeviceError(str(exc)) from None
    candidates = [p for p in list_ports.comports() if p.vid == vid and p.pid == pid]
    matches = [p for p in candidates
               if serial is None or (p.serial_number or "").lower() == serial.lower()]
    if len(matches) == 1:
        return matches[0].device
    if not matches:
        seen = ", ".join(f"{p.device} (serial {p.serial_number})" for p in candidates)
        also = f"; {vid:04x}:{pid:04x} ports attached: {seen}" if seen else ""
        raise DeviceDisconnected(f"no serial port matches {port}{also}")
    found = ", ".join(f"{p.device} (serial {p.serial_number or 'none'})" for p in matches)
    raise DeviceError(f"{port} matches {len(matches)} ports ({found}): add the serial number, "
                      "or use a /dev/serial/by-id/... path")


@cache
def usb_backend() -> Any:
    """The pyusb backend every USB user in this process shares.

    pyusb's libusb 1.0 backend unless env EDGE_AGENT_USB_BACKEND names `module:callable`; that
    callable returns an IBackend (how simulated devices attach where there is no USB bus).
    Raises DeviceError when none is available, so a device reports why instead of crashing.
    """
    spec = os.environ.get(USB_BACKEND_ENV)
    if spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr or "get_backend")
            return factory()
        except Exception as exc:
            raise DeviceError(f"{USB_BACKEND_ENV}={spec} could not be loaded: {exc!r}") from exc
    import usb.backend.libusb1

    backend = usb.backend.libusb1.get_backend()
    if backend is None:
        raise DeviceError("no USB backend: libusb 1.0 is not installed "
                          "(apt-get install libusb-1.0-0)")
    return backend
