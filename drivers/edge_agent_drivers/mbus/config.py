"""Config schema of the `mbus` driver."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.sdk import PointConfig, SerialDevice


class RecordPoint(PointConfig):
    """Publish the record named `record` (see docs/driver-mbus.md) as `name`."""

    record: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")


class MbusDevice(SerialDevice):
    """One meter on a wired M-Bus line; several meters share the line's port."""

    baudrate: int = Field(2400, ge=300, le=38400)  # 2400 is what nearly every meter speaks
    parity: Literal["N", "E", "O"] = "E"  # the standard's 8E1
    address: int | None = Field(None, ge=0, le=250)  # primary address
    secondary: str | None = Field(None, pattern=r"^[0-9]{8}$")  # identification number
    interval: float = Field(60.0, ge=1, le=86400)
    timeout: float = Field(1.0, gt=0, le=30)  # for each answer
    retries: int = Field(2, ge=0, le=5)  # a request unanswered or garbled is repeated
    max_telegrams: int = Field(8, ge=1, le=64)  # multi-telegram readouts stop after this many
    points: list[RecordPoint] = Field(default_factory=list)
    all_records: bool = True  # publish records `points` does not name, under their own names
    manufacturer_data: bool = False  # publish manufacturer-specific data as hex text

    def point_configs(self) -> list[RecordPoint]:
        return self.points

    @model_validator(mode="after")
    def _one_address(self) -> MbusDevice:
        if (self.address is None) == (self.secondary is None):
            raise ValueError("give exactly one of address (primary, 0-250) and secondary "
                             "(the 8-digit identification number)")
        return self
