"""The Modbus device and point schema (the contract's `devices[].points[]`)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from edge_agent.config import DeviceConfig, PointConfig
from edge_agent.decode import register_count

Table = Literal["holding", "input", "coil", "discrete"]
ValueType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                    "float32", "float64", "string"]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]
BIT_TABLES = ("coil", "discrete")


class ModbusPoint(PointConfig):
    table: Table = "holding"
    address: int = Field(ge=0, le=65535)
    type: ValueType = "uint16"
    order: Order = "ABCD"
    length: int = Field(1, ge=1, le=250)  # characters, for type string
    bit: int | None = Field(None, ge=0, le=15)  # a bool taken from one bit of a register

    @model_validator(mode="after")
    def _fits_table(self) -> ModbusPoint:
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"table '{self.table}' holds single bits: type must be bool")
        if self.address + self.registers > 65536:
            raise ValueError("the value runs past address 65535")
        return self

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
    retries: int = Field(1, ge=0, le=10)
    max_registers: int = Field(125, ge=1, le=125)
    max_bits: int = Field(2000, ge=1, le=2000)
    max_gap: int = Field(0, ge=0, le=100)  # unused registers a request may read across
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_points(self) -> ModbusDevice:
        names = [p.name for p in self.points]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"point names must be unique: {', '.join(duplicates)}")
        for point in self.points:
            if point.table not in BIT_TABLES and point.registers > self.max_registers:
                raise ValueError(f"point '{point.name}' needs more than max_registers")
        return self

    @property
    def is_tcp(self) -> bool:
        return self.port.startswith("tcp://")
