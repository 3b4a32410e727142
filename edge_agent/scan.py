"""`edge-agent scan`: serial ports and USB devices with their stable identities, and the
devices on one line where a driver can search it (`--mbus PORT`).

For each, what survives a replug or reboot (the /dev/serial/by-id link, VID:PID and serial
number, the USB bus path) and a config snippet using it, so a user copies an identity into
the config rather than a tty name that changes with plug order. Finding nothing is not an
error: the command says so and exits 0.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TextIO

import yaml
from serial.tools import list_ports

from edge_agent.errors import DeviceError
from edge_agent.ports import usb_backend

BY_ID_DIR = Path("/dev/serial/by-id")
_HUB_CLASS = 0x09
_CLASSES = {0x02: "CDC", 0x03: "HID", 0x08: "mass storage", 0x0A: "CDC data", 0xFF: "vendor"}
_TRANSFER = {0: "control", 1: "isochronous", 2: "bulk", 3: "interrupt"}


def scan(out: TextIO) -> int:
    found = _serial_ports(out) + _usb_devices(out)
    if not found:
        print("nothing to configure: no serial ports or USB devices were found", file=out)
    return 0


def search_line(driver_name: str, port: str, out: TextIO, **options: Any) -> int:
    """`scan --mbus PORT`: the devices a driver finds on one line (the driver knows how).

    The core names the driver only by its registered name, so a third-party driver can offer
    the same. Exit 0 with what was found (nothing found is said, not an error), 2 when the
    driver cannot search or the port cannot be opened."""
    from edge_agent import registry

    try:
        driver = registry.load(driver_name)
        found = driver.discover(port, **options)
    except NotImplementedError as exc:
        print(f"edge-agent: scan: {driver_name}: {exc}", file=out)
        return 2
    except DeviceError as exc:
        print(f"edge-agent: scan: {port}: {exc}", file=out)
        return 2
    print(f"{driver_name} line {port}: {len(found)} found", file=out)
    for item in found:
        print(f"  {item.description}", file=out)
        if item.config:
            print("    config:", file=out)
            _snippet([item.config], out)
    return 0


def _snippet(data: Any, out: TextIO) -> None:
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=200)
    for line in text.splitlines():
        print(f"      {line}", file=out)


def _by_id_links() -> dict[str, list[str]]:
    """Real device path -> its /dev/serial/by-id links (udev names them by USB identity)."""
    links: dict[str, list[str]] = {}
    if BY_ID_DIR.is_dir():
        for link in sorted(BY_ID_DIR.iterdir()):
            links.setdefault(str(link.resolve()), []).append(str(link))
    return links


def _serial_ports(out: TextIO) -> int:
    ports = sorted(list_ports.comports(), key=lambda p: p.device)
    print("Serial ports", file=out)
    if not ports:
        print("  none found", file=out)
        return 0
    links = _by_id_links()
    for port in ports:
        by_id = links.get(str(Path(port.device).resolve()), [])
        line = f"  {port.device}"
        if port.vid is not None:
            line += f"  usb {port.vid:04x}:{port.pid:04x}"
            line += f" serial {port.serial_number}" if port.serial_number else " (no serial number)"
        if port.description and port.description != "n/a":
            line += f"  {port.description}"
        print(line, file=out)
        for link in by_id:
            print(f"    by-id: {link}", file=out)
        if port.vid is not None and port.serial_number:
            stable = f"usb:{port.vid:04x}:{port.pid:04x}:{port.serial_number}"
        elif by_id:
            stable = by_id[0]
        elif port.vid is not None:  # no serial number: unique only while it is the only one
            stable = f"usb:{port.vid:04x}:{port.pid:04x}"
        else:
            stable = port.device  # a built-in UART: its name is already stable
        print("    config:", file=out)
        _snippet({"port": stable}, out)
    return len(ports)


def _usb_devices(out: TextIO) -> int:
    import usb.core

    print("USB devices", file=out)
    try:
        backend = usb_backend()
        devices = [d for d in usb.core.find(find_all=True, backend=backend)
                   if d.bDeviceClass != _HUB_CLASS]
    except (DeviceError, usb.core.USBError) as exc:
        print(f"  cannot list USB devices: {exc}", file=out)
        return 0
    if not devices:
        print("  none found", file=out)
        return 0
    for device in devices:
        _describe_usb(device, out)
    return len(devices)


def _string(device: Any, index: int) -> str | None:
    import usb.util

    if not index:
        return None
    try:
        return usb.util.get_string(device, index)
    except (ValueError, NotImplementedError, OSError):  # no permission, or no strings
        return None


def _describe_usb(device: Any, out: TextIO) -> None:
    ids = f"{device.idVendor:04x}:{device.idProduct:04x}"
    product = _string(device, device.iProduct)
    names = " ".join(s for s in (_string(device, device.iManufacturer), product) if s)
    serial = _string(device, device.iSerialNumber)
    ports = getattr(device, "port_numbers", None)
    path = f"{device.bus}-{'.'.join(map(str, ports))}" if ports and device.bus is not None else None
    line = f"  {ids}  {names or '(no strings: check permissions)'}"
    line += f"  serial {serial}" if serial else ""
    line += f"  bus path {path}" if path else ""
    print(line, file=out)
    first_in: tuple[int, int] | None = None
    try:
        configuration = device.get_active_configuration()
        interfaces = list(configuration)
    except (OSError, NotImplementedError) as exc:
        print(f"    interfaces unreadable: {exc}", file=out)
        interfaces = []
    for interface in interfaces:
        endpoints = []
        for ep in interface:
            kind = _TRANSFER[ep.bmAttributes & 0x03]
            direction = "IN" if ep.bEndpointAddress & 0x80 else "OUT"
            endpoints.append(f"0x{ep.bEndpointAddress:02x} ({kind} {direction})")
            if first_in is None and direction == "IN" and kind in ("interrupt", "bulk"):
                first_in = (interface.bInterfaceNumber, ep.bEndpointAddress)
        cls = _CLASSES.get(interface.bInterfaceClass, f"class 0x{interface.bInterfaceClass:02x}")
        print(f"    interface {interface.bInterfaceNumber}: {cls}, endpoints "
              f"{', '.join(endpoints) or 'none'}", file=out)
    if first_in is None:
        return
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (product or ids)).strip("-").lower() or "usb-device"
    snippet: dict[str, Any] = {"name": name, "driver": "usb", "vid": f"0x{device.idVendor:04x}",
                               "pid": f"0x{device.idProduct:04x}"}
    if serial:
        snippet["serial"] = serial
    elif path:
        snippet["bus_path"] = path
    snippet.update({"interface": first_in[0], "endpoint": f"0x{first_in[1]:02x}",
                    "fields": [{"name": "value", "offset": 0, "type": "uint8"}]})
    print("    config (describe the report layout in fields; see docs/driver-usb.md):",
          file=out)
    _snippet([snippet], out)
