"""What a transport and an output say to each other, and nothing of either's insides.

`Wire` is what a transport asks of the output it carries (the will of each connection, the
topics to subscribe, the births on connect, how an outbox row becomes a message). `Link` is
what an output may ask of the transport (publish now, publish retained state, reconnect).
Both are protocols so that neither side imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from edge_agent.outbox import Row


class Message(NamedTuple):
    """One MQTT message as the output wants it sent."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Wire(Protocol):
    """The output side of a connection, as the transport sees it."""

    def will(self) -> Message:
        """The last will of the next connection (called once per connection attempt)."""
        ...

    def subscriptions(self) -> Sequence[str]:
        """Topic filters to subscribe to on every connection (downlink, host state)."""
        ...

    def on_connected(self) -> None:
        """The broker accepted the connection: publish births or online status now."""
        ...

    def ready(self) -> bool:
        """True while outbox rows may flow (False e.g. until Sparkplug births are out)."""
        ...

    def encode(self, row: Row) -> Message | None:
        """The message for one outbox row at publish time; None: nothing to send, ack it."""
        ...


class Link(Protocol):
    """The transport side of a connection, as an output sees it."""

    def is_connected(self) -> bool: ...

    def publish_now(self, message: Message) -> None:
        """Publishes outside the outbox (births, deaths, command results) if connected."""
        ...

    def publish_state(self, topic: str, payload: bytes) -> None:
        """Publishes retained state (statuses); dropped while disconnected, since the
        current state is republished on every connect."""
        ...

    def pump(self) -> None:
        """Hands waiting outbox rows to the broker (after the output became ready)."""
        ...

    def disconnect(self) -> None:
        """Ends the current connection on purpose; the transport connects again."""
        ...


class SessionWatch(Protocol):
    """Told when a connection starts and ends; may hold the next reconnect back (see
    `edge_agent.conflict`: two agents with one client id must not take turns at full speed)."""

    def session_started(self, url: str) -> None:
        """The broker at `url` accepted a connection (its subscriptions are on their way)."""
        ...

    def session_ended(self, reason_code: int | None) -> float | None:
        """A connection that was up ended; `reason_code` is the broker's MQTT 5 DISCONNECT
        reason, if it sent one. Returns seconds to wait before reconnecting, or None."""
        ...


class PlainWire:
    """A `Wire` that publishes outbox rows as stored, with a fixed will and nothing to say on
    connect: for tools and benchmarks that drive a publisher without an agent."""

    def __init__(self, will: Message, qos: int = 1) -> None:
        self._will, self.qos = will, qos

    def will(self) -> Message:
        return self._will

    def subscriptions(self) -> Sequence[str]:
        return ()

    def on_connected(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def encode(self, row: Row) -> Message:
        return Message(row.topic, row.payload, self.qos)
