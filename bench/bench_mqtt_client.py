"""CPU per QoS 1 publish and per PUBACK: paho's Client against LeanClient, on Mosquitto.

usage: .venv/bin/python bench/bench_mqtt_client.py [messages per run, default 4000] [rounds, 3]

One message of the rig's size (about 3 KB, 50 readings) at a time, as the agent sends one per
poll: publish it, wait for the socket to turn readable, read the PUBACK. The thread's CPU
clock is read around `publish` (+ `loop_write`) and around `loop_read`, so waiting is not
counted. Prints µs per message for each client and protocol, rounds interleaved.
"""

from __future__ import annotations

import select
import sys
import time
from collections import deque
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.transport.lean_paho import LeanClient
from edge_agent_simulators.broker import Mosquitto

PAYLOAD = (b'{"device":"unit-1","seq":1,"ts":1700000000000,"readings":['
           + b'{"name":"register-01","value":12345.5},' * 50 + b'{"n":"x","v":1}]}')


def run(cls: type[paho.Client], protocol: int, port: int, count: int) -> tuple[float, float]:
    kwargs: dict[str, Any] = {"protocol": protocol}
    if protocol != paho.MQTTv5:
        kwargs["clean_session"] = True
    client = cls(CallbackAPIVersion.VERSION2, client_id=f"bench-{cls.__name__}", **kwargs)
    client.max_inflight_messages_set(116)
    client.max_queued_messages_set(0)
    client.on_log = lambda *args: None  # as the agent: an on_log is set
    acks: deque[int] = deque()
    client.on_publish = lambda c, userdata, mid, reason, props: acks.append(mid)
    client.connect("127.0.0.1", port, 30)
    while not client.is_connected():
        select.select([client.socket()], [], [], 1)
        client.loop_read()
    sock = client.socket()
    publishing = reading = 0.0
    for _ in range(count):
        start = time.thread_time()
        client.publish("site/unit-1/telemetry", PAYLOAD, 1, False)
        if client.want_write():
            client.loop_write()
        publishing += time.thread_time() - start
        while not acks:
            select.select([sock], [], [], 1)
            start = time.thread_time()
            client.loop_read()
            reading += time.thread_time() - start
        acks.popleft()
    client.disconnect()
    client.loop_write()
    return 1e6 * publishing / count, 1e6 * reading / count


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    broker = Mosquitto().start()
    try:
        for _ in range(rounds):
            for protocol, name in ((paho.MQTTv311, "3.1.1"), (paho.MQTTv5, "5")):
                for cls in (paho.Client, LeanClient):
                    pub, read = run(cls, protocol, broker.port, count)
                    print(f"{cls.__name__:10} MQTT {name:5}  publish {pub:5.1f} µs  "
                          f"PUBACK {read:5.1f} µs  total {pub + read:5.1f} µs", flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
