"""Config schema of the `iec62056` driver (IEC 62056-21 optical port, mode C readout)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.sdk import PointConfig, SerialDevice

#: a readout at 300 baud sign-on takes one to several seconds, and many meters count optical
#: readouts or lock the port for a while after one: never ask more often than this
MIN_INTERVAL = 10.0


class ObisPoint(PointConfig):
    """One OBIS code to publish under `name` (unit: the table's, the meter's, or this one)."""

    obis: str = Field(min_length=3, max_length=32, pattern=r"^[0-9A-Za-z:.\-*&]+$")


class Iec62056Device(SerialDevice):
    """`port` is the optical probe's serial port; the sign-on always starts at 300 baud 7E1."""

    baudrate: int = Field(300, ge=300, le=19200)  # the sign-on rate: 300 in the standard
    parity: Literal["N", "E", "O"] = "E"  # the standard's 7E1
    bytesize: Literal[7, 8] = 7
    address: str = Field("", max_length=32, pattern=r"^[0-9A-Za-z ]*$")  # device address
    max_baudrate: int = Field(9600, ge=300, le=19200)  # cap the rate the meter offers
    interval: float = Field(60.0, ge=MIN_INTERVAL, le=86400)
    timeout: float = Field(2.0, gt=0, le=60)  # silence tolerated inside one readout
    readout_timeout: float = Field(30.0, gt=0, le=600)  # a whole readout, sign-on to BCC
    points: list[ObisPoint] = Field(default_factory=list)
    #: publish the codes that `points` does not list (named from the code table or the code)
    all_codes: bool = True

    def point_configs(self) -> list[ObisPoint]:
        return self.points

    @model_validator(mode="after")
    def _unique_codes(self) -> Iec62056Device:
        from edge_agent_drivers.iec62056.codec import BAUD_RATES, normalise_code

        if self.max_baudrate not in BAUD_RATES.values():
            raise ValueError(f"max_baudrate {self.max_baudrate} is not one of "
                             f"{sorted(BAUD_RATES.values())}")
        seen: dict[str, str] = {}
        for point in self.points:
            code = normalise_code(point.obis)
            if code in seen:
                raise ValueError(f"OBIS code {point.obis} is listed twice "
                                 f"({seen[code]} and {point.name})")
            seen[code] = point.name
        return self
