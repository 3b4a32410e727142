"""The agent's small exception tree.

Drivers convert their library's exceptions into these where they leave the driver, so the
runtime decides retry, backoff and status from one vocabulary, whatever the protocol.
"""


class EdgeAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """The configuration is invalid; `problems` holds one line per offending field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StartupError(EdgeAgentError):
    """The agent cannot start (its HTTP port is taken): one line for the operator."""


class DriverLoadError(EdgeAgentError):
    """A driver named in the config is not registered or failed to import."""


class DeviceError(EdgeAgentError):
    """A device could not be reached or answered wrongly; the runtime reconnects."""

    kind = "device"


class DeviceTimeout(DeviceError):
    """The device did not answer within its timeout."""

    kind = "timeout"


class DeviceDisconnected(DeviceError):
    """The transport to the device is gone (port vanished, socket closed)."""

    kind = "disconnected"


class ProtocolError(DeviceError):
    """The device answered with a frame that failed a check (CRC, checksum, length)."""

    kind = "protocol"


class WriteRefused(EdgeAgentError):
    """A downlink write was refused before it reached the device."""
