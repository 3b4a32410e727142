"""The broker connection has Nagle's algorithm off.

paho leaves it on. With it on, a flush's write waits in the kernel while the previous write
is not yet acknowledged at the TCP level (the broker's PUBACK carries that ACK), so on a busy
host a reading is held back by as long as the broker is late. The publisher batches its
writes itself (a flush's PUBLISHes go in one `send`), so nothing is gained by leaving it on.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

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

    def encode(self, row: Any) -> Message:
        return Message(row.topic, row.payload, 1)


def test_the_broker_connection_has_nagle_off(mosquitto: Mosquitto) -> None:
    async def nodelay() -> int:
        publisher = MqttPublisher(MqttConfig(url=mosquitto.url), "nodelay",
                                  MemoryOutbox(1 << 20), Wire())
        task = asyncio.create_task(publisher.run())
        try:
            await asyncio.wait_for(publisher.connected.wait(), 10)
            session = publisher._session
            assert session is not None
            sock = session.client.socket()
            assert sock is not None
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            await publisher.stop(None)
            task.cancel()

    assert asyncio.run(nodelay()) != 0
