"""The broker connection sends each write at once (TCP_NODELAY), on every connection.

With Nagle's algorithm on (paho's default) a write waits while an earlier one is not yet
acknowledged, and at QoS 0 the broker sends nothing back to carry the acknowledgement: on the
peer rig QoS 0 telemetry reached the subscriber about 40 ms late (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import socket

from edge_agent.config import MqttConfig
from edge_agent.store.memory import MemoryOutbox
from edge_agent.transport.base import Message
from edge_agent.transport.mqtt import MqttPublisher
from edge_agent_simulators.broker import Mosquitto


class Wire:
    def will(self) -> Message:
        return Message("t/will", b"gone", 1)

    def subscriptions(self) -> tuple[()]:
        return ()

    def on_connected(self) -> None:
        pass

    def ready(self) -> bool:
        return True

    def encode(self, row) -> Message:  # type: ignore[no-untyped-def]
        return Message(row.topic, row.payload, 0)


def nodelay(publisher: MqttPublisher) -> int:
    sock = publisher._session.client.socket()  # type: ignore[union-attr]
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_every_connection_to_the_broker_has_nagle_off(mosquitto: Mosquitto) -> None:
    async def test() -> None:
        publisher = MqttPublisher(MqttConfig(url=mosquitto.url), "nodelay",
                                  MemoryOutbox(1 << 20), Wire())  # type: ignore[arg-type]
        task = asyncio.create_task(publisher.run())
        try:
            await asyncio.wait_for(publisher.connected.wait(), 10)
            first = publisher._session
            assert first is not None
            assert nodelay(publisher) != 0
            first.client.socket().shutdown(socket.SHUT_RDWR)  # the connection is lost
            await asyncio.wait_for(first.ended.wait(), 10)
            while publisher._session in (None, first):  # it reconnects by itself
                await asyncio.sleep(0.01)
            await asyncio.wait_for(publisher.connected.wait(), 10)
            assert nodelay(publisher) != 0  # set again on the new socket
        finally:
            await publisher.stop(None)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(test())
