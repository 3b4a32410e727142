"""Config schema of the `can` driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from edge_agent.sdk import DeviceConfig, PointConfig

#: python-can interfaces reached through a serial port: one owner per port applies to them
SERIAL_INTERFACES = frozenset({"slcan", "serial", "robotell", "seeedstudio"})


class SignalPoint(PointConfig):
    """Publish DBC signal `signal` as `name` (with this unit, scale, deadband...)."""

    signal: str = Field(min_length=1, max_length=128)
    message: str | None = None  # where two messages carry a signal of the same name


class CanDevice(DeviceConfig):
    """A CAN bus (or the part of it this device's DBC describes) as one device."""

    interface: str = Field(pattern=r"^[a-z0-9_]+$")  # python-can's interface name
    channel: str = Field(min_length=1)  # slcan: serial port or usb:VID:PID; socketcan: can0
    bitrate: int | None = Field(None, ge=5_000, le=1_000_000)
    dbc: Path
    #: decode only these messages (DBC names or frame ids); also the bus's frame filter
    messages: list[str | int] | None = None
    points: list[SignalPoint] = Field(default_factory=list)
    #: publish signals that `points` does not list, under their DBC names
    all_signals: bool = True
    #: a bus may be quiet for hours (a vehicle parked, a machine off): silence is not a fault
    #: unless asked for (an unplugged adapter is a disconnect anyway); see docs/driver-can.md
    stale_after: float | None = Field(0.0, ge=0, le=86400)
    #: at most one decoded frame per message id per this many seconds (0: every frame)
    throttle: float = Field(0.0, ge=0, le=3600)
    #: seconds to wait after opening a serial adapter (some reset when the port opens)
    open_delay: float = Field(0.5, ge=0, le=10)
    #: frames held for the event loop when it falls behind; past this they are dropped, counted
    queue: int = Field(1000, ge=10, le=100_000)
    #: python-can keyword arguments for the interface (e.g. tty_baudrate for slcan)
    options: dict[str, Any] = Field(default_factory=dict)
    _database: Any = PrivateAttr(None)

    def point_configs(self) -> list[SignalPoint]:
        return self.points

    @model_validator(mode="after")
    def _load_dbc(self) -> CanDevice:
        import cantools

        try:
            self._database = cantools.database.load_file(str(self.dbc), strict=True)
        except FileNotFoundError:
            raise ValueError(f"dbc: no such file: {self.dbc}") from None
        except Exception as exc:  # cantools raises a variety of parse errors
            raise ValueError(f"dbc: {self.dbc} is not a readable DBC file: {exc}") from None
        if not hasattr(self._database, "messages"):
            raise ValueError(f"dbc: {self.dbc} holds no CAN messages")
        known = {m.name for m in self._database.messages}
        ids = {m.frame_id for m in self._database.messages}
        for wanted in self.messages or ():
            if (wanted not in known) if isinstance(wanted, str) else (wanted not in ids):
                raise ValueError(f"messages: {wanted!r} is not a message of {self.dbc}")
        if self.interface in SERIAL_INTERFACES and self.port is None:
            self.port = self.channel  # so the core's one-owner-per-port check covers it
        return self

    @property
    def database(self) -> Any:
        return self._database
