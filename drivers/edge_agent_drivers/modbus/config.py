"""The Modbus device and point schema (the contract's `devices[].points[]`)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from edge_agent.sdk import DeviceConfig, PointConfig, register_count

Table = Literal["holding", "input", "coil", "discrete"]
ValueType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                    "float32", "float64", "string"]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]
BIT_TABLES = ("coil", "discrete")

# A request costs a round trip: on RS-485 about 20 character times of framing, gaps and
# turnaround before any data, against 2 per register, so reading across up to 10 unused
# registers is cheaper than a second request. On TCP a round trip is worth far more than 64
# bytes in the same segment. Either way a device that refuses the wider read (exception 02)
# gets its reads split and the narrower layout is remembered (see driver.py).
AUTO_GAP_SERIAL = 10
AUTO_GAP_TCP = 32


class ModbusPoint(PointConfig):
    table: Table = "holding"
    address: int = Field(ge=0, le=65535)
    type: ValueType = "uint16"
    order: Order = "ABCD"
    length: int = Field(1, ge=1, le=250)  # characters, for type string
    bit: int | None = Field(None, ge=0, le=15)  # a bool taken from one bit of a register
    # raw values the device sends for "not available" (SunSpec's 0x8000, ABB's all-FF...):
    # published as bad, never as a number
    invalid: list[int] | None = None
    # the name of an int16 point of the same device holding a power of ten (SunSpec's
    # sunssf): value = raw * 10^that * scale + offset, re-read with every poll
    scale_factor: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _fits_table(self) -> ModbusPoint:
        if self.table in BIT_TABLES and "type" not in self.model_fields_set:
            self.type = "bool"  # the only type a coil or discrete input can have
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"table '{self.table}' holds single bits: type must be bool")
        if self.address + self.registers > 65536:
            raise ValueError("the value runs past address 65535")
        return self

    def value_type(self) -> str:
        return self.type

    @property
    def registers(self) -> int:
        """Registers (or bits, for coil/discrete) this point occupies."""
        return 1 if self.table in BIT_TABLES else register_count(self.type, self.length)


class ModbusDevice(DeviceConfig):
    model_config = ConfigDict(extra="forbid")

    port: str = Field(min_length=1)
    unit: int = Field(1, ge=0, le=247)
    baudrate: int = Field(9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    framer: Literal["rtu", "ascii", "socket"] | None = None  # default: socket for tcp://, else rtu
    retries: int = Field(1, ge=0, le=10)  # further attempts after no answer or "busy" (06)
    max_registers: int = Field(125, ge=1, le=125)
    max_bits: int = Field(2000, ge=1, le=2000)
    # unused registers a request may read across; None: AUTO_GAP_SERIAL or AUTO_GAP_TCP
    max_gap: int | None = Field(None, ge=0, le=100)
    # silence kept between frames on a serial line, in seconds; None: 3.5 character times
    frame_gap: float | None = Field(None, ge=0, le=1)
    points: list[ModbusPoint] = Field(min_length=1)

    def point_configs(self) -> list[ModbusPoint]:
        return self.points

    @model_validator(mode="after")
    def _unique_points(self) -> ModbusDevice:
        names = [p.name for p in self.points]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"point names must be unique: {', '.join(duplicates)}")
        by_name = {p.name: p for p in self.points}
        for point in self.points:
            if point.table not in BIT_TABLES and point.registers > self.max_registers:
                raise ValueError(f"point '{point.name}' needs more than max_registers")
            if point.scale_factor is not None:
                factor = by_name.get(point.scale_factor)
                if factor is None or factor is point or factor.type != "int16" or (
                        factor.scale_factor is not None):
                    raise ValueError(f"point '{point.name}': scale_factor must name another "
                                     f"int16 point of this device without a scale_factor")
                if point.writable:
                    raise ValueError(f"point '{point.name}': a point with a scale_factor "
                                     f"cannot be writable")
        return self

    @property
    def is_tcp(self) -> bool:
        return self.port.startswith("tcp://")

    @property
    def framing(self) -> str:
        return self.framer or ("socket" if self.is_tcp else "rtu")

    @property
    def gap_registers(self) -> int:
        """How many unused registers one request may read across instead of making two."""
        if self.max_gap is not None:
            return self.max_gap
        return AUTO_GAP_TCP if self.is_tcp else AUTO_GAP_SERIAL

    @property
    def silence(self) -> float:
        """Seconds of silence to keep between frames on the line (RTU's t3.5)."""
        if self.frame_gap is not None:
            return self.frame_gap
        if self.is_tcp or self.framing != "rtu":
            return 0.0  # TCP has no line; ASCII frames are delimited by ':' and CR LF
        if self.baudrate > 19200:
            return 0.00175  # the serial-line spec fixes t3.5 at 1.75 ms above 19200 baud
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return 3.5 * bits / self.baudrate

    def line_settings(self) -> tuple[object, ...]:
        """What every device sharing this port must agree on. Over TCP only the framing:
        the serial settings (which profiles fill in) are the gateway's business, not ours."""
        if self.is_tcp:
            return (self.framing,)
        return (self.framing, self.baudrate, self.parity, self.stopbits, self.bytesize)
