"""What a started simulator is: where a driver reaches it and the agent config for it.

Its own module, so each simulator can return one without importing the runner that starts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_agent_simulators.modbus import Unit


@dataclass
class Running:
    """A started simulator: where it listens and the agent device config that reaches it."""

    name: str
    where: str
    device_config: dict[str, Any]
    handle: Any = None
    units: dict[int, Unit] = field(default_factory=dict)
    #: environment the agent needs to reach this device (simulated USB: the backend)
    env: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
