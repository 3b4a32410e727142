"""A connection that dies under a write ends the session; it never takes the process down.

paho closes its socket there and then when a write finds the connection gone. Under uvloop,
asking the loop to watch that closed descriptor for writing makes libuv abort() the whole
process at its next poll (SIGABRT, no log line): seen when a broker went away while the agent
was publishing. The publisher runs here in a process of its own, under uvloop as in
production, so an abort shows as the child's exit status instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from edge_agent_simulators.broker import Mosquitto

SCRIPT = textwrap.dedent("""
    import asyncio, socket, sys
    import uvloop
    from edge_agent.config import MqttConfig
    from edge_agent.store.memory import MemoryOutbox
    from edge_agent.transport.base import Message
    from edge_agent.transport.mqtt import MqttPublisher

    class Wire:
        def will(self): return Message("t/will", b"gone", 1)
        def subscriptions(self): return ()
        def on_connected(self): pass
        def ready(self): return True
        def encode(self, row): return Message(row.topic, row.payload, 1)

    async def main(url):
        outbox = MemoryOutbox(1 << 20)
        publisher = MqttPublisher(MqttConfig(url=url), "loss", outbox, Wire())
        task = asyncio.create_task(publisher.run())
        await asyncio.wait_for(publisher.connected.wait(), 10)
        first = publisher._session
        # the peer is gone: every send from now on fails with EPIPE inside paho
        first.client.socket().shutdown(socket.SHUT_WR)
        publisher.publish_now(Message("t/x", b"1" * 1000, 1))
        outbox.append("d", outbox.next_seq("d"), "t/d", b"after")
        publisher.pump()
        await asyncio.sleep(0)  # the loop polls: libuv aborted here before the fix
        await asyncio.wait_for(first.ended.wait(), 10)
        while publisher._session in (None, first):  # it reconnects by itself
            await asyncio.sleep(0.01)
        assert await publisher.drain(10), "the row appended after the loss is delivered"
        await publisher.stop(None)
        task.cancel()
        print("survived", publisher.last_error is None)

    uvloop.run(main(sys.argv[1]))
""")


def test_a_write_that_finds_the_connection_gone_ends_only_the_session(mosquitto: Mosquitto):
    result = subprocess.run([sys.executable, "-c", SCRIPT, mosquitto.url], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "mqtt_disconnected" in result.stdout  # said, and survived
    assert result.stdout.splitlines()[-1] == "survived True"
