"""The output protocol: what a wire format decides, from the first reading to the last word.

An output turns the agent's events into messages of one format (`mqtt.format`): what goes
into the outbox for a device's readings and what leaves for each stored row (`telemetry`,
`encode`), what is said on connect (`on_connected`: births, online status), when a device's
status changes or it stops (`device_status`, `device_stopped`), and at shutdown (`shutdown`).
It also maps its downlink topics to write requests (`subscriptions`, `command`) and answers
them (`answer`); validating and performing the writes is `edge_agent.downlink`'s, the same
for every format.

An output sees devices only as `DeviceView`s (read-only) through a `DeviceDirectory`, and the
broker only as a `Link`; it never sees the agent, the runners or the MQTT client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.downlink import WriteRequest, WriteResult
from edge_agent.inbound import Rejected
from edge_agent.model import PointSpec
from edge_agent.transport.base import Link, Message, Wire

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

#: one normalised reading: {"metric", "value", "ts", "quality"[, "unit"]}
ReadingDict = dict[str, Any]


class DeviceView(Protocol):
    """What an output may know of one configured device (read-only)."""

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str:
        """"connected", "disconnected" or "error"."""
        ...

    @property
    def error(self) -> str | None: ...

    @property
    def points(self) -> Mapping[str, PointSpec]: ...

    @property
    def point_types(self) -> Mapping[str, str]:
        """Declared raw type of each point that has one (Modbus `type`, USB field `type`)."""
        ...

    @property
    def last_values(self) -> Mapping[str, ReadingDict]: ...


@dataclass
class FixedView:
    """A `DeviceView` that is not a running device: one no longer configured whose buffered
    data still goes out, or a device driven by a test or a benchmark."""

    name: str
    status: str = "disconnected"
    error: str | None = None
    points: Mapping[str, PointSpec] = field(default_factory=dict)
    point_types: Mapping[str, str] = field(default_factory=dict)
    last_values: Mapping[str, ReadingDict] = field(default_factory=dict)


class DeviceDirectory(Protocol):
    """The configured devices, as the supervisor currently runs them."""

    def views(self) -> Iterable[DeviceView]: ...

    def view(self, name: str) -> DeviceView | None: ...


class NodeFacts(Protocol):
    """What the agent knows of itself as a node of a fleet (`edge_agent.conflict`)."""

    def status_fields(self) -> dict[str, Any]:
        """Fields of the node status besides state, version and devices: the config hash,
        the process's instance id, a node name conflict."""
        ...

    def status_seen(self, payload: bytes, retained: bool) -> None:
        """A message on the node's own status topic (another agent may have written it)."""
        ...


class Output(Wire, Protocol):
    """One wire format. `Wire` (will, subscriptions, on_connected, ready, encode) is the part
    the transport calls; the rest is called by the agent's parts on the event loop."""

    def telemetry(self, device: str, seq: int, readings: list[ReadingDict]) -> tuple[str, bytes]:
        """(topic, payload) the outbox stores for one poll's readings (the hot path)."""
        ...

    def device_status(self, device: DeviceView) -> None:
        """A device's status changed (publish a status, a DBIRTH or a DDEATH)."""
        ...

    def device_stopped(self, name: str, removed: bool) -> None:
        """A device's runner stopped: `removed` from the config, or restarting with new
        settings (then a new runner and `device_status` follow)."""
        ...

    def command(self, topic: str, payload: bytes,
                retained: bool) -> WriteRequest | Rejected | None:
        """The write request a downlink message asks for; None for messages that are not
        writes (or that the output handled itself, e.g. Sparkplug STATE and Rebirth);
        `Rejected` for a bad message with nobody to answer. Never raises: payloads are read
        with `edge_agent.inbound`."""
        ...

    def answer(self, request: WriteRequest, results: Sequence[WriteResult]) -> None:
        """Tells the requester how its request ended, one result per write of it."""
        ...

    def shutdown(self) -> Message | None:
        """The last message before a clean disconnect (offline status, NDEATH), if any."""
        ...

    def node_changed(self) -> None:
        """What the node status says changed (devices, config hash, a conflict): publish it
        if the format can without restarting anything."""
        ...


class OutputFactory(Protocol):
    def __call__(self, config: AgentConfig, node: str, devices: DeviceDirectory,
                 link: Link, facts: NodeFacts | None = None) -> Output: ...


__all__ = ["DeviceDirectory", "DeviceView", "FixedView", "Link", "Message", "NodeFacts", "Output",
           "OutputFactory", "ReadingDict", "WriteRequest", "WriteResult"]
