"""The driver SDK: everything a driver needs from edge-agent, under one name.

A driver, built in or third party, imports from here and nowhere else in `edge_agent`; the
modules behind these names may move, this face does not. See docs/drivers.md.

    from edge_agent.sdk import Driver, DeviceConfig, PointConfig, Reading, Sample, now_ms

- Driver base classes: `Driver` (async I/O), `BlockingDriver` (blocking libraries, one thread
  per device).
- What a driver hands over: `Sample`, `Reading`, the qualities `GOOD`, `BAD`, `UNCERTAIN`,
  `now_ms()`; `PointSpec`, how the core normalises one metric.
- Config models: `DeviceConfig` (the keys every device has; override `point_configs()` to
  hand the core your points), `SerialDevice` (plus the serial line keys), `PointConfig` (the
  keys every point has, built into a PointSpec by `to_spec()`), `PointModel` (the bare point
  contract, for points whose keys differ), `Strict` (a nested section that forbids unknown keys),
  `NAME_PATTERN`.
- Errors: `DeviceError` and its kinds `DeviceTimeout`, `DeviceDisconnected`, `ProtocolError`;
  `WriteRefused`; `EdgeAgentError` at the root.
- Serial devices: `SerialTransport` (a port read through the event loop), `LineSplitter`
  (bytes into lines), `FaultTally` (counts and sparingly logs dropped input),
  `resolve_port` (`usb:VID:PID[:SERIAL]` to the tty it has now).
- USB devices: `usb_backend()`, the pyusb backend of the process (simulated or libusb).
- Binary values (edge_agent.decode): `decode_value`, `encode_value`, `unpacker`,
  `register_count`, and the names `TYPES`, `TYPE_NAMES`, `ORDERS`.
- Logs: `get_logger(name, **bound)`, a structured logger.
- `ANSWERS_DUE`: a link with answers still due counts itself in it, so delivery can commit
  several answers at once (edge_agent.answers_due).
"""

from __future__ import annotations

from edge_agent.answers_due import ANSWERS_DUE, AnswersDue
from edge_agent.decode import (
    ORDERS,
    TYPE_NAMES,
    TYPES,
    decode_value,
    encode_value,
    register_count,
    unpacker,
)
from edge_agent.device_config import (
    NAME_PATTERN,
    DeviceConfig,
    PointConfig,
    PointModel,
    SerialDevice,
    Strict,
)
from edge_agent.driver import BlockingDriver, Discovered, Driver
from edge_agent.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    EdgeAgentError,
    ProtocolError,
    WriteRefused,
)
from edge_agent.framing import LineSplitter
from edge_agent.logs import get as get_logger
from edge_agent.model import BAD, GOOD, QUALITIES, UNCERTAIN, PointSpec, Reading, Sample, now_ms
from edge_agent.ports import resolve_port, usb_backend
from edge_agent.serial_transport import SerialTransport
from edge_agent.tally import FaultTally

__all__ = [
    "ANSWERS_DUE",
    "BAD",
    "GOOD",
    "NAME_PATTERN",
    "ORDERS",
    "QUALITIES",
    "TYPES",
    "TYPE_NAMES",
    "UNCERTAIN",
    "AnswersDue",
    "BlockingDriver",
    "DeviceConfig",
    "DeviceDisconnected",
    "DeviceError",
    "DeviceTimeout",
    "Discovered",
    "Driver",
    "EdgeAgentError",
    "FaultTally",
    "LineSplitter",
    "PointConfig",
    "PointModel",
    "PointSpec",
    "ProtocolError",
    "Reading",
    "Sample",
    "SerialDevice",
    "SerialTransport",
    "Strict",
    "WriteRefused",
    "decode_value",
    "encode_value",
    "get_logger",
    "now_ms",
    "register_count",
    "resolve_port",
    "unpacker",
    "usb_backend",
]
