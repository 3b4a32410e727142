"""The USB driver: finds the device with pyusb, requests a report, reads and decodes it.

pyusb blocks, so every call runs on the device's own thread (BlockingDriver). The device is
looked up afresh at every connect, by VID/PID and then serial number or bus path, so a
device that was unplugged is found again wherever it re-enumerates.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Any

import usb.core
import usb.util

from edge_agent.sdk import (
    BlockingDriver,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    Sample,
    now_ms,
    usb_backend,
)
from edge_agent_drivers.usb.config import UsbDevice
from edge_agent_drivers.usb.report import ReportDecoder

# HID class requests (Device Class Definition for HID 1.11, section 7.2)
HID_GET_REPORT, HID_SET_REPORT = 0x01, 0x09
HID_INPUT_REPORT, HID_OUTPUT_REPORT = 0x01, 0x02
_TO_INTERFACE = usb.util.CTRL_TYPE_CLASS | usb.util.CTRL_RECIPIENT_INTERFACE
#: errnos that mean the device is gone rather than misbehaving
_GONE = {errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN, errno.EIO}
_ENDPOINT_TYPES = {usb.util.ENDPOINT_TYPE_INTR: "interrupt",
                   usb.util.ENDPOINT_TYPE_BULK: "bulk",
                   usb.util.ENDPOINT_TYPE_ISO: "isochronous",
                   usb.util.ENDPOINT_TYPE_CTRL: "control"}


def bus_path(device: Any) -> str | None:
    """`1-1.4`: bus number, then the hub port chain, as Linux names it in sysfs."""
    ports = getattr(device, "port_numbers", None)
    if device.bus is None or not ports:
        return None
    return f"{device.bus}-{'.'.join(str(p) for p in ports)}"


def serial_number(device: Any) -> str | None:
    """The device's serial string, or None where it has none or it cannot be read."""
    if not device.iSerialNumber:
        return None
    try:
        return usb.util.get_string(device, device.iSerialNumber)
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None


def describe_endpoints(interface: Any) -> str:
    return ", ".join(
        f"0x{ep.bEndpointAddress:02x} ({_ENDPOINT_TYPES[usb.util.endpoint_type(ep.bmAttributes)]} "
        f"{'IN' if ep.bEndpointAddress & 0x80 else 'OUT'})" for ep in interface) or "none"


class UsbDriver(BlockingDriver):
    config_model = UsbDevice

    def __init__(self, config: UsbDevice) -> None:
        super().__init__(config)
        self.config: UsbDevice = config
        self.decoder = ReportDecoder(config.fields)
        self._request = config.request_bytes
        self._timeout_ms = max(1, int(config.timeout * 1000))
        self._device: Any = None
        self._out_endpoint: int | None = None
        self._length = config.length or 64

    async def connect(self) -> None:
        await self.in_thread(self._open)

    async def close(self) -> None:
        await self.in_thread(self._release)
        await super().close()

    async def poll(self) -> Sample:
        return await self.in_thread(self._read)

    # -- on the device thread ----------------------------------------------------------------
    def _find(self) -> Any:
        config = self.config
        try:
            found = list(usb.core.find(find_all=True, backend=usb_backend(),
                                       idVendor=config.vid, idProduct=config.pid))
        except usb.core.USBError as exc:
            raise DeviceError(f"cannot list USB devices: {exc}") from None
        if config.bus_path:
            found = [d for d in found if bus_path(d) == config.bus_path]
        serials = {id(d): serial_number(d) for d in found}
        candidates = found
        if config.serial:
            found = [d for d in found if serials[id(d)] == config.serial]
        chosen = found[0] if len(found) == 1 else None
        for device in candidates:  # reading serial numbers opened them
            if device is not chosen:
                with contextlib.suppress(usb.core.USBError):
                    usb.util.dispose_resources(device)
        if chosen is not None:
            return chosen
        if not found:
            unreadable = sum(1 for s in serials.values() if s is None) if config.serial else 0
            hint = (f" ({unreadable} {config.vid:04x}:{config.pid:04x} device(s) with an "
                    "unreadable serial number: check permissions)") if unreadable else ""
            raise DeviceDisconnected(f"USB device {config.identity} is not attached{hint}")
        where = ", ".join(f"{bus_path(d) or d.address} (serial {serials[id(d)]})" for d in found)
        raise DeviceError(f"{len(found)} USB devices match {config.identity}: {where}; "
                          "set `serial` or `bus_path` to pick one")

    def _open(self) -> None:
        config = self.config
        device = self._find()
        number = config.interface
        try:
            if _kernel_driver_active(device, number):
                if not config.detach_kernel_driver:
                    raise DeviceError(f"a kernel driver holds interface {number} of "
                                      f"{config.identity} and detach_kernel_driver is false")
                device.detach_kernel_driver(number)
            try:
                configuration = device.get_active_configuration()
            except usb.core.USBError:  # unconfigured: pick the configured or the first one
                device.set_configuration(config.configuration)
                configuration = device.get_active_configuration()
            interface = usb.util.find_descriptor(configuration, bInterfaceNumber=number)
            if interface is None:
                raise DeviceError(f"{config.identity} has no interface {number}")
            endpoint = usb.util.find_descriptor(interface, bEndpointAddress=config.endpoint)
            if endpoint is None or usb.util.endpoint_type(endpoint.bmAttributes) not in (
                    usb.util.ENDPOINT_TYPE_INTR, usb.util.ENDPOINT_TYPE_BULK):
                raise DeviceError(f"endpoint 0x{config.endpoint:02x} is not an interrupt or bulk "
                                  f"IN endpoint of interface {number}; it has "
                                  f"{describe_endpoints(interface)}")
            self._out_endpoint = self._find_out_endpoint(interface)
            usb.util.claim_interface(device, number)
        except (usb.core.USBError, DeviceError) as exc:
            with contextlib.suppress(usb.core.USBError):
                usb.util.dispose_resources(device)
            if isinstance(exc, DeviceError):
                raise
            raise self._converted(exc) from None
        self._length = config.length or endpoint.wMaxPacketSize
        self._device = device

    def _find_out_endpoint(self, interface: Any) -> int | None:
        config = self.config
        if self._request is None or config.request_via != "endpoint":
            return None
        if config.out_endpoint is not None:
            wanted = usb.util.find_descriptor(interface, bEndpointAddress=config.out_endpoint)
        else:
            wanted = usb.util.find_descriptor(interface, custom_match=lambda ep: (
                usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_OUT))
        if wanted is None:
            raise DeviceError(f"interface {config.interface} has no OUT endpoint "
                              f"{'' if config.out_endpoint is None else hex(config.out_endpoint)}"
                              f" for the request (it has {describe_endpoints(interface)}); "
                              "use request_via: set_report for HID devices without one")
        return wanted.bEndpointAddress

    def _read(self) -> Sample:
        device, config = self._device, self.config
        if device is None:
            raise DeviceDisconnected("not connected")
        timeout = self._timeout_ms
        try:
            if self._request is not None:
                self._send_request(device)
            if config.read_via == "endpoint":
                data = device.read(config.endpoint, self._length, timeout)
            else:
                data = device.ctrl_transfer(
                    usb.util.CTRL_IN | _TO_INTERFACE, HID_GET_REPORT,
                    HID_INPUT_REPORT << 8 | config.report_id, config.interface, self._length,
                    timeout)
        except usb.core.USBTimeoutError:
            raise DeviceTimeout(f"no report from {config.identity} within {config.timeout}s"
                                ) from None
        except usb.core.USBError as exc:
            raise self._converted(exc) from None
        report = data.tobytes()
        if self.decoder.short(report):  # the fields past its end are published as bad
            self.errors["short_report"] += 1
        return Sample(now_ms(), self.decoder.decode(report))

    def _send_request(self, device: Any) -> None:
        config, request, timeout = self.config, self._request, self._timeout_ms
        if config.request_via == "endpoint":
            device.write(self._out_endpoint, request, timeout)
        elif config.request_via == "set_report":
            device.ctrl_transfer(usb.util.CTRL_OUT | _TO_INTERFACE, HID_SET_REPORT,
                                 HID_OUTPUT_REPORT << 8 | config.report_id, config.interface,
                                 request, timeout)
        else:
            control = config.control
            assert control is not None  # the config requires it for request_via: control
            device.ctrl_transfer(control.request_type, control.request, control.value,
                                 control.index, request, timeout)

    def _release(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            with contextlib.suppress(usb.core.USBError):  # already gone: nothing to release
                usb.util.release_interface(device, self.config.interface)
            with contextlib.suppress(usb.core.USBError):
                usb.util.dispose_resources(device)

    def _converted(self, exc: usb.core.USBError) -> DeviceError:
        identity = self.config.identity
        if exc.errno in _GONE:
            return DeviceDisconnected(f"USB device {identity} disconnected: {exc.strerror}")
        if exc.errno == errno.EACCES:
            return DeviceError(f"permission denied on USB device {identity}: grant access with a "
                               "udev rule (see docs/driver-usb.md)")
        if exc.errno == errno.EBUSY:
            return DeviceError(f"interface {self.config.interface} of {identity} is busy "
                               "(claimed by another program or a kernel driver)")
        return DeviceError(f"USB error on {identity}: {exc.strerror or exc}")


def _kernel_driver_active(device: Any, interface: int) -> bool:
    try:
        return bool(device.is_kernel_driver_active(interface))
    except NotImplementedError:  # not on this platform (Windows, macOS): nothing to detach
        return False
