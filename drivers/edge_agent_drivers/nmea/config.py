"""Config schema of the `nmea` driver."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edge_agent.sdk import SerialDevice

SentenceType = Literal["GGA", "RMC", "VTG", "GSA", "GLL", "ZDA"]


class NmeaDevice(SerialDevice):
    baudrate: int = Field(9600, ge=50, le=4_000_000)  # 4800 for classic NMEA 0183 devices
    #: silence (s) that ends a fix epoch; 0 ends epochs only on a new UTC time or repeated type
    epoch_gap: float = Field(0.1, ge=0, le=10)
    require_checksum: bool = True
    talkers: list[str] | None = None  # accept only these talker ids, e.g. [GN]
    sentences: list[SentenceType] | None = None  # decode only these types

    @field_validator("talkers")
    @classmethod
    def _two_letters(cls, value: list[str] | None) -> list[str] | None:
        for talker in value or ():
            if len(talker) != 2 or not talker.isalnum():
                raise ValueError(f"'{talker}' is not a two-letter talker id (GP, GN, ...)")
        return [t.upper() for t in value] if value else value
