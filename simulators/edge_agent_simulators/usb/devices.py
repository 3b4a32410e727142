"""The simulated USB devices: descriptors and what each does with transfers.

A model is the device's side of the wire: it owns its descriptors, answers control requests
(string descriptors, HID SET_REPORT/GET_REPORT) and produces the reports its IN endpoints
return. No pyusb here: the backend maps IBackend calls onto these methods.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from edge_agent_simulators.waves import Wave

# endpoint attributes (bmAttributes transfer type)
BULK, INTERRUPT = 0x02, 0x03
GET_DESCRIPTOR, DESC_STRING = 0x06, 0x03
HID_GET_REPORT, HID_SET_REPORT = 0x01, 0x09
LANGID_EN_US = 0x0409


@dataclass
class Endpoint:
    address: int
    attributes: int
    max_packet: int
    interval: int = 0


@dataclass
class InterfaceModel:
    number: int
    cls: int
    endpoints: list[Endpoint]
    subclass: int = 0
    protocol: int = 0
    kernel_driver: bool = False  # bound to a kernel driver (usbhid) when plugged in


class UsbModel:
    """Base of a simulated device. Subclasses set ids, strings and interfaces, and answer
    `on_out` (data sent to the device) and `report` (the bytes an IN transfer returns)."""

    vid = 0
    pid = 0
    manufacturer = "edge-agent"
    product = "simulated device"
    device_class = 0

    def __init__(self, spec: dict[str, Any]) -> None:
        self.serial: str | None = spec.get("serial")
        self.bus: int = int(spec.get("bus", 1))
        self.port_numbers: tuple[int, ...] = tuple(spec.get("ports", (1,)))
        self.address: int = int(spec.get("address", 2))
        self.interfaces: list[InterfaceModel] = self.make_interfaces()
        self.pending: dict[int, deque[bytes]] = {}  # IN endpoint -> queued reports
        self.strings = [s for s in (self.manufacturer, self.product, self.serial) if s]

    def make_interfaces(self) -> list[InterfaceModel]:
        raise NotImplementedError

    # -- descriptors -----------------------------------------------------------------------
    def device_descriptor(self) -> SimpleNamespace:
        index = {s: i + 1 for i, s in enumerate(self.strings)}
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=self.device_class,
            bDeviceSubClass=0, bDeviceProtocol=0, bMaxPacketSize0=8, idVendor=self.vid,
            idProduct=self.pid, bcdDevice=0x0100, iManufacturer=index.get(self.manufacturer, 0),
            iProduct=index.get(self.product, 0), iSerialNumber=index.get(self.serial, 0),
            bNumConfigurations=1, address=self.address, bus=self.bus,
            port_number=self.port_numbers[-1], port_numbers=self.port_numbers, speed=2)

    def configuration_descriptor(self) -> SimpleNamespace:
        total = 9 + sum(9 + 7 * len(i.endpoints) for i in self.interfaces)
        return SimpleNamespace(bLength=9, bDescriptorType=2, wTotalLength=total,
                               bNumInterfaces=len(self.interfaces), bConfigurationValue=1,
                               iConfiguration=0, bmAttributes=0x80, bMaxPower=50,
                               extra_descriptors=[])

    def interface_descriptor(self, intf: int) -> SimpleNamespace:
        model = self.interfaces[intf]
        return SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=model.number,
                               bAlternateSetting=0, bNumEndpoints=len(model.endpoints),
                               bInterfaceClass=model.cls, bInterfaceSubClass=model.subclass,
                               bInterfaceProtocol=model.protocol, iInterface=0,
                               extra_descriptors=[])

    def endpoint_descriptor(self, ep: int, intf: int) -> SimpleNamespace:
        model = self.interfaces[intf].endpoints[ep]
        return SimpleNamespace(bLength=7, bDescriptorType=5, bEndpointAddress=model.address,
                               bmAttributes=model.attributes, wMaxPacketSize=model.max_packet,
                               bInterval=model.interval, bRefresh=0, bSynchAddress=0,
                               extra_descriptors=[])

    def string_descriptor(self, index: int) -> bytes:
        if index == 0:
            return bytes([4, DESC_STRING]) + struct.pack("<H", LANGID_EN_US)
        text = self.strings[index - 1].encode("utf-16-le")
        return bytes([2 + len(text), DESC_STRING]) + text

    # -- transfers ---------------------------------------------------------------------------
    def control_in(self, request_type: int, request: int, value: int, index: int) -> bytes | None:
        """Answers a device-to-host control request; None stalls it (unsupported)."""
        if request_type == 0x80 and request == GET_DESCRIPTOR and value >> 8 == DESC_STRING:
            if value & 0xFF > len(self.strings):
                return None
            return self.string_descriptor(value & 0xFF)
        return None

    def control_out(self, request_type: int, request: int, value: int, index: int,
                    data: bytes) -> bool:
        """Takes a host-to-device control request; False stalls it."""
        return False

    def on_out(self, endpoint: int, data: bytes) -> None:
        """Data the host wrote to an OUT endpoint."""

    def queue(self, endpoint: int, report: bytes) -> None:
        self.pending.setdefault(endpoint, deque(maxlen=32)).append(report)

    def take(self, endpoint: int) -> bytes | None:
        """The next report on an IN endpoint, or None when the device has nothing to send."""
        queued = self.pending.get(endpoint)
        return queued.popleft() if queued else None


def _wave(spec: dict[str, Any], key: str, default: Any) -> Wave:
    return Wave(spec.get(key, default))


class ThermoHygrometer(UsbModel):
    """A HID thermometer/hygrometer modelled on the TEMPerHUM family (1a86:e025 style).

    The host sends the 8-byte output report `01 80 33 01 00 00 00 00` (on the interrupt OUT
    endpoint or by HID SET_REPORT); the device answers with one 8-byte input report on the
    interrupt IN endpoint 0x81: `80 02 TT TT HH HH 00 00`, temperature int16 big-endian in
    hundredths of a degree Celsius at offset 2, relative humidity uint16 big-endian in
    hundredths of a percent at offset 4. HID GET_REPORT returns the same report. usbhid holds
    the interface until the host detaches it, as on Linux.
    """

    vid, pid = 0x1A86, 0xE025
    manufacturer = "PCsensor (simulated)"
    product = "TEMPerHUM"
    READ_COMMAND = bytes.fromhex("01803301")

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.temperature = _wave(spec, "temperature", {"sine": {"offset": 22, "amplitude": 3,
                                                                "period": 300}})
        self.humidity = _wave(spec, "humidity", {"random_walk": {"start": 45, "step": 0.3,
                                                                 "min": 20, "max": 80}})
        self.unsolicited = bool(spec.get("unsolicited", False))  # reports without a request

    def make_interfaces(self) -> list[InterfaceModel]:
        return [InterfaceModel(0, 0x03, [Endpoint(0x81, INTERRUPT, 8, 10),
                                         Endpoint(0x01, INTERRUPT, 8, 10)], kernel_driver=True)]

    def report(self) -> bytes:
        celsius = round(float(self.temperature.value()) * 100)
        humidity = round(float(self.humidity.value()) * 100)
        return struct.pack(">BBhH2x", 0x80, 0x02, celsius, max(0, min(humidity, 10000)))

    def on_out(self, endpoint: int, data: bytes) -> None:
        if bytes(data[:4]) == self.READ_COMMAND:
            self.queue(0x81, self.report())

    def control_out(self, request_type: int, request: int, value: int, index: int,
                    data: bytes) -> bool:
        if request_type == 0x21 and request == HID_SET_REPORT:
            self.on_out(0x01, data)
            return True
        return False

    def control_in(self, request_type: int, request: int, value: int, index: int) -> bytes | None:
        if request_type == 0xA1 and request == HID_GET_REPORT:
            return self.report()
        return super().control_in(request_type, request, value, index)

    def take(self, endpoint: int) -> bytes | None:
        report = super().take(endpoint)
        if report is None and self.unsolicited:
            return self.report()
        return report


class BulkLogger(UsbModel):
    """A vendor-class data logger on bulk endpoints.

    The host writes the command `A5 01` to bulk OUT 0x02; the device answers on bulk IN 0x82
    with a 16-byte little-endian record: uint32 record number at 0, float32 supply voltage
    at 4, int16 temperature in tenths of a degree Celsius at 8, uint16 status flags at 10
    (bit 0: battery low), uint32 uptime in seconds at 12. Any other command is answered with
    the 2-byte error reply `A5 FF`.
    """

    vid, pid = 0x1209, 0xDA7A
    manufacturer = "edge-agent"
    product = "Bulk data logger (simulated)"
    device_class = 0xFF
    READ_RECORD = bytes.fromhex("a501")

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.voltage = _wave(spec, "voltage", {"random_walk": {"start": 3.6, "step": 0.01,
                                                               "min": 3.2, "max": 4.2}})
        self.temperature = _wave(spec, "temperature", {"sine": {"offset": 18, "amplitude": 5,
                                                                "period": 600}})
        self.battery_low = _wave(spec, "battery_low", False)
        self.uptime = _wave(spec, "uptime", {"counter": {"start": 0, "rate": 1}})
        self.records = 0

    def make_interfaces(self) -> list[InterfaceModel]:
        return [InterfaceModel(0, 0xFF, [Endpoint(0x82, BULK, 64), Endpoint(0x02, BULK, 64)])]

    def record(self) -> bytes:
        self.records += 1
        tenths = round(float(self.temperature.value()) * 10)
        flags = 1 if self.battery_low.value() else 0
        return struct.pack("<IfhHI", self.records, float(self.voltage.value()), tenths, flags,
                           int(self.uptime.value()))

    def on_out(self, endpoint: int, data: bytes) -> None:
        self.queue(0x82, self.record() if bytes(data) == self.READ_RECORD else b"\xa5\xff")


MODELS: dict[str, type[UsbModel]] = {
    "thermo-hygrometer": ThermoHygrometer,
    "bulk-logger": BulkLogger,
}

