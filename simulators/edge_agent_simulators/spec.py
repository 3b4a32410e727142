"""Simulator specs: a small YAML file describing devices and how their values move.

Each simulated device also knows the agent config that reaches it, so `edge-agent simulate`
can print a ready-to-use config and tests can build one.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.decode import TYPE_NAMES


class RegisterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: Literal[TYPE_NAMES] = "uint16"  # type: ignore[valid-type]  # pydantic reads the tuple
    order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    length: int = 1
    scale: float = 1.0
    unit: str | None = None
    writable: bool = False
    value: Any = 0


class UnitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit: int = Field(1, ge=0, le=247)
    registers: list[RegisterSpec] = Field(default_factory=list)
    faults: dict[str, Any] | None = None
    #: answers to Read Device Identification (43/14), e.g. {0: Vendor, 1: Product code}
    identification: dict[int, str] | None = None
    #: a device profile to serve (edge_agent_simulators.profiles): its points become
    #: registers holding its examples; `registers` add to or replace them by name
    profile: str | None = None


class DeviceSpec(BaseModel):
    """One simulated device. `kind` picks the simulator; other keys are the kind's own."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: str
    interval: float = 1.0
    listen: str = "127.0.0.1:0"
    units: list[UnitSpec] = Field(default_factory=list)
    shares_port_with: str | None = None


class SimSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[DeviceSpec]


def load(path: Path | None) -> SimSpec:
    text = path.read_text() if path else files("edge_agent_simulators").joinpath(
        "default.yaml").read_text()
    return SimSpec.model_validate(yaml.safe_load(text))
