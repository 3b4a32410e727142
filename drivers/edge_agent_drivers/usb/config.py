"""The USB device and report-field schema (the contract's `driver: usb` keys)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from edge_agent.sdk import DeviceConfig, PointModel, PointSpec, Strict

FieldType = Literal["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                    "uint64", "float32", "float64", "string"]


def _int_or_hex(value: object) -> object:
    """YAML reads `0x1a86` as an int already; `"1a86"` and `"0x1a86"` are hex strings."""
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            raise ValueError(f"'{value}' is not a hex number") from None
    return value


Hex16 = Annotated[int, BeforeValidator(_int_or_hex), Field(ge=0, le=0xFFFF)]
Hex8 = Annotated[int, BeforeValidator(_int_or_hex), Field(ge=0, le=0xFF)]


class UsbField(PointModel):
    """One value in the report. `offset` is the byte offset, as in the contract; the additive
    term of `value = raw * scale + value_offset` is therefore called `value_offset` here."""

    offset: int = Field(ge=0, le=65535)
    type: FieldType = "uint8"
    endian: Literal["big", "little"] = "big"
    bit: int | None = Field(None, ge=0, le=63)  # a bool taken from one bit of the value
    length: int = Field(1, ge=1, le=4096)  # bytes, for type string
    scale: float = 1.0
    value_offset: float = 0.0
    unit: str | None = None
    min: float | None = None
    max: float | None = None

    def to_spec(self) -> PointSpec:
        return PointSpec(self.name, self.unit, self.scale, self.value_offset, False,
                         self.min, self.max, value_type=self.type)

    @model_validator(mode="after")
    def _bit_only_for_bool(self) -> UsbField:
        if self.bit is not None and self.type != "bool":
            raise ValueError("bit applies to type bool only")
        return self


class ControlTransfer(Strict):
    """A host-to-device control transfer sent before each read; its data stage is `request`."""

    request_type: Hex8
    request: Hex8
    value: Hex16 = 0
    index: Hex16 = 0


class UsbDevice(DeviceConfig):
    model_config = ConfigDict(extra="forbid")

    vid: Hex16
    pid: Hex16
    serial: str | None = None  # picks one of several identical devices
    bus_path: str | None = Field(None, pattern=r"^\d+-\d+(\.\d+)*$")  # e.g. 1-1.4 (sysfs style)
    configuration: int | None = Field(None, ge=1, le=255)  # set when the device is unconfigured
    interface: int = Field(0, ge=0, le=255)
    endpoint: Hex8  # IN endpoint (interrupt or bulk)
    length: int | None = Field(None, ge=1, le=65536)  # bytes per read; default wMaxPacketSize
    request: str | None = None  # hex bytes sent before each read
    request_via: Literal["endpoint", "set_report", "control"] = "endpoint"
    out_endpoint: Hex8 | None = None  # default: the interface's first OUT endpoint
    control: ControlTransfer | None = None  # for request_via: control
    read_via: Literal["endpoint", "get_report"] = "endpoint"
    report_id: int = Field(0, ge=0, le=255)  # HID report id for set_report/get_report
    detach_kernel_driver: bool = True
    fields: list[UsbField] = Field(min_length=1)

    def point_configs(self) -> list[UsbField]:
        return self.fields

    @field_validator("request")
    @classmethod
    def _hex_bytes(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                bytes.fromhex(value)
            except ValueError:
                raise ValueError(f"'{value}' is not hex bytes like \"01 80 33 01\"") from None
        return value

    @field_validator("endpoint")
    @classmethod
    def _is_in_endpoint(cls, value: int) -> int:
        if not value & 0x80:
            raise ValueError(f"0x{value:02x} is an OUT endpoint; IN endpoints have bit 7 set")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> UsbDevice:
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"field names must be unique: {', '.join(duplicates)}")
        if self.request_via == "control" and self.control is None:
            raise ValueError("request_via: control needs a `control` transfer")
        if self.out_endpoint is not None and self.out_endpoint & 0x80:
            raise ValueError(f"out_endpoint 0x{self.out_endpoint:02x} is an IN endpoint")
        return self

    @property
    def request_bytes(self) -> bytes | None:
        return bytes.fromhex(self.request) if self.request is not None else None

    @property
    def identity(self) -> str:
        """How log lines and errors name the device: `1a86:e025 serial X at 1-1.4`."""
        text = f"{self.vid:04x}:{self.pid:04x}"
        if self.serial:
            text += f" serial {self.serial}"
        if self.bus_path:
            text += f" at {self.bus_path}"
        return text
