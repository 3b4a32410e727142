"""A pyusb backend (usb.backend.IBackend) whose bus holds simulated devices.

Set env `EDGE_AGENT_USB_BACKEND=edge_agent_simulators.usb.backend:get_backend` and point
`EDGE_SIMULATORS_USB_SPEC` at one or more spec files (os.pathsep-separated); every process that
loads the backend (the agent, `edge-agent scan`) builds the same devices from them.

Plugging crosses processes through the file system: a device with a `present_file` is
attached exactly while that file exists. Each (re)creation of the file is a new plug-in
(its content is a token naming the plug-in), so handles opened before an unplug fail with
ENODEV afterwards, exactly as libusb reports a vanished device, and the kernel driver is
bound again.
"""

from __future__ import annotations

import array
import errno
import os
import time
from pathlib import Path
from typing import Any

import usb.backend
import yaml
from usb.core import USBError, USBTimeoutError

from edge_agent_simulators.usb.devices import MODELS, UsbModel

SIM_ENV = "EDGE_SIMULATORS_USB_SPEC"
BACKEND_SPEC = "edge_agent_simulators.usb.backend:get_backend"
# libusb error codes pyusb's own libusb1 backend raises with
_NO_DEVICE, _TIMEOUT, _PIPE, _BUSY, _NOT_FOUND = -4, -7, -9, -6, -5


class SimDevice:
    """A device on the simulated bus: its model and whether (and since when) it is plugged."""

    def __init__(self, model: UsbModel, present_file: str | None) -> None:
        self.model = model
        self.present_file = present_file
        self.detached: set[int] = set()
        self._generation: Any = None

    def generation(self) -> Any:
        """Identifies the current plug-in; None while unplugged."""
        if self.present_file is None:
            return 0
        try:
            with open(self.present_file, "rb") as file:
                return file.read() or b"plugged"
        except FileNotFoundError:
            return None

    def plugged_in(self) -> Any:
        """The generation, resetting device state when it is a new plug-in."""
        generation = self.generation()
        if generation is not None and generation != self._generation:
            self._generation = generation
            self.detached.clear()  # the kernel binds its driver again
            self.model.pending.clear()
        return generation


class SimHandle:
    def __init__(self, device: SimDevice, generation: Any) -> None:
        self.device, self.generation = device, generation
        self.claimed: set[int] = set()
        self.configuration = 1


def _gone() -> USBError:
    return USBError("No such device (it may have been disconnected)", _NO_DEVICE, errno.ENODEV)


class SimBackend(usb.backend.IBackend):
    """Answers pyusb's backend calls from the simulated devices' models."""

    def __init__(self, devices: list[SimDevice]) -> None:
        super().__init__()
        self.devices = devices

    # -- enumeration and descriptors -----------------------------------------------------------
    def enumerate_devices(self) -> Any:
        return [d for d in self.devices if d.plugged_in() is not None]

    def get_parent(self, dev: SimDevice) -> None:
        return None

    def get_device_descriptor(self, dev: SimDevice) -> Any:
        return dev.model.device_descriptor()

    def get_configuration_descriptor(self, dev: SimDevice, config: int) -> Any:
        if config != 0:
            raise IndexError("configuration index out of range")
        return dev.model.configuration_descriptor()

    def get_interface_descriptor(self, dev: SimDevice, intf: int, alt: int, config: int) -> Any:
        if config != 0 or alt != 0 or intf >= len(dev.model.interfaces):
            raise IndexError("interface index out of range")
        return dev.model.interface_descriptor(intf)

    def get_endpoint_descriptor(self, dev: SimDevice, ep: int, intf: int, alt: int,
                                config: int) -> Any:
        if ep >= len(dev.model.interfaces[intf].endpoints):
            raise IndexError("endpoint index out of range")
        return dev.model.endpoint_descriptor(ep, intf)

    # -- handles -----------------------------------------------------------------------------
    def open_device(self, dev: SimDevice) -> SimHandle:
        generation = dev.plugged_in()
        if generation is None:
            raise _gone()
        return SimHandle(dev, generation)

    def close_device(self, dev_handle: SimHandle) -> None:
        dev_handle.claimed.clear()

    def _live(self, handle: SimHandle) -> UsbModel:
        if handle.device.plugged_in() != handle.generation:
            raise _gone()
        return handle.device.model

    def set_configuration(self, dev_handle: SimHandle, config_value: int) -> None:
        self._live(dev_handle)
        dev_handle.configuration = config_value

    def get_configuration(self, dev_handle: SimHandle) -> int:
        self._live(dev_handle)
        return dev_handle.configuration

    def set_interface_altsetting(self, dev_handle: SimHandle, intf: int, altsetting: int) -> None:
        self._live(dev_handle)

    def claim_interface(self, dev_handle: SimHandle, intf: int) -> None:
        model = self._live(dev_handle)
        if self._kernel_bound(dev_handle, intf):
            raise USBError("Resource busy", _BUSY, errno.EBUSY)
        if intf >= len(model.interfaces):
            raise USBError("Entity not found", _NOT_FOUND, errno.ENOENT)
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: SimHandle, intf: int) -> None:
        self._live(dev_handle)
        dev_handle.claimed.discard(intf)

    def _kernel_bound(self, handle: SimHandle, intf: int) -> bool:
        interfaces = handle.device.model.interfaces
        return (intf < len(interfaces) and interfaces[intf].kernel_driver
                and intf not in handle.device.detached)

    def is_kernel_driver_active(self, dev_handle: SimHandle, intf: int) -> bool:
        self._live(dev_handle)
        return self._kernel_bound(dev_handle, intf)

    def detach_kernel_driver(self, dev_handle: SimHandle, intf: int) -> None:
        self._live(dev_handle)
        if not self._kernel_bound(dev_handle, intf):
            raise USBError("Entity not found", _NOT_FOUND, errno.ENOENT)
        dev_handle.device.detached.add(intf)

    def attach_kernel_driver(self, dev_handle: SimHandle, intf: int) -> None:
        self._live(dev_handle)
        dev_handle.device.detached.discard(intf)

    # -- transfers ---------------------------------------------------------------------------
    def _write(self, dev_handle: SimHandle, ep: int, intf: int, data: array.array,
               timeout: int) -> int:
        model = self._live(dev_handle)
        if intf not in dev_handle.claimed:
            raise USBError("Entity not found", _NOT_FOUND, errno.ENOENT)
        model.on_out(ep, data.tobytes())
        return len(data)

    def _read(self, dev_handle: SimHandle, ep: int, intf: int, buff: array.array,
              timeout: int) -> int:
        model = self._live(dev_handle)
        if intf not in dev_handle.claimed:
            raise USBError("Entity not found", _NOT_FOUND, errno.ENOENT)
        report = model.take(ep)
        if report is None:  # nothing to send: the transfer times out, as on a real bus
            time.sleep((timeout or 1000) / 1000)
            self._live(dev_handle)
            raise USBTimeoutError("Operation timed out", _TIMEOUT, errno.ETIMEDOUT)
        size = min(len(report), len(buff))
        buff[:size] = array.array("B", report[:size])
        return size

    bulk_write = intr_write = _write
    bulk_read = intr_read = _read

    def ctrl_transfer(self, dev_handle: SimHandle, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: array.array, timeout: int) -> int:
        model = self._live(dev_handle)
        if bmRequestType & 0x80:
            answer = model.control_in(bmRequestType, bRequest, wValue, wIndex)
            if answer is None:
                raise USBError("Pipe error", _PIPE, errno.EPIPE)
            size = min(len(answer), len(data))
            data[:size] = array.array("B", answer[:size])
            return size
        if not model.control_out(bmRequestType, bRequest, wValue, wIndex, data.tobytes()):
            raise USBError("Pipe error", _PIPE, errno.EPIPE)
        return len(data)

    def clear_halt(self, dev_handle: SimHandle, ep: int) -> None:
        self._live(dev_handle)

    def reset_device(self, dev_handle: SimHandle) -> None:
        self._live(dev_handle)


def load_devices(path: Path) -> list[SimDevice]:
    """Builds the devices of one spec file: `devices: [{model: ..., serial: ..., ...}]`."""
    data = yaml.safe_load(path.read_text()) or {}
    devices = []
    for entry in data.get("devices") or []:
        model_cls = MODELS.get(entry.get("model"))
        if model_cls is None:
            raise ValueError(f"{path}: USB model '{entry.get('model')}' is not one of "
                             f"{', '.join(MODELS)}")
        devices.append(SimDevice(model_cls(entry), entry.get("present_file")))
    return devices


def get_backend() -> SimBackend:
    """The factory EDGE_AGENT_USB_BACKEND names: devices from the spec files in env."""
    devices: list[SimDevice] = []
    for path in filter(None, os.environ.get(SIM_ENV, "").split(os.pathsep)):
        devices += load_devices(Path(path))
    return SimBackend(devices)
