"""`edge-agent scan`: serial ports and USB devices with their stable identities."""

from __future__ import annotations

from typing import TextIO


def scan(out: TextIO) -> int:
    from serial.tools import list_ports

    ports = list(list_ports.comports())
    if not ports:
        print("no serial ports found", file=out)
    for port in ports:
        ident = f"usb:{port.vid:04x}:{port.pid:04x}" if port.vid is not None else port.device
        if port.serial_number and port.vid is not None:
            ident += f":{port.serial_number}"
        print(f"{port.device}  {port.description}  port: {ident}", file=out)
    return 0
