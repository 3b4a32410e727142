"""Support for the delivery tests: a persistent subscriber, device specs, seq accounting."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent_simulators.broker import Mosquitto

#: mosquitto as root drops to user "mosquitto", which cannot read our temp folders
ROOT_OK = "user root"
#: keep every queued message for an offline persistent subscriber (default is 1000)
UNLIMITED_QUEUE = "max_queued_messages 0\nmax_inflight_messages 0\n"


def persistent_broker(port: int | None = None, extra: str = "") -> Mosquitto:
    """A Mosquitto that saves sessions on a clean stop, so a stopped and restarted broker
    still queues telemetry for a subscriber that is offline at that moment."""
    return Mosquitto(port=port, persistence=True, extra=ROOT_OK + "\n" + UNLIMITED_QUEUE + extra)


def modbus_devices(count: int, interval: float, registers: int = 1) -> dict[str, Any]:
    """A simulator spec: `count` Modbus TCP devices with `registers` counters each."""
    return {"devices": [
        {"name": f"dev-{index}", "kind": "modbus-tcp", "interval": interval,
         "units": [{"unit": 1, "registers": [
             {"name": f"r{r}", "address": r, "type": "uint16",
              "value": {"counter": {"start": r, "rate": 1}}} for r in range(registers)]}]}
        for index in range(count)]}


class PersistentSubscriber:
    """A QoS 1 subscriber with a persistent session (clean_session False, fixed client id)
    that reconnects by itself, so it misses nothing while the broker is down."""

    def __init__(self, port: int, topic: str = "+/+/+/telemetry",
                 client_id: str = "delivery-test-sub") -> None:
        self.records: list[tuple[str, bytes, bool]] = []  # topic, payload, dup flag
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("subscriber did not get SUBACK")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.records.append((message.topic, message.payload, bool(message.dup)))

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(payload) for _, payload, _ in self.records]

    def seqs(self) -> dict[str, list[int]]:
        """Every seq received per device, in arrival order, duplicates included."""
        out: dict[str, list[int]] = defaultdict(list)
        for message in self.messages():
            out[message["device"]].append(message["seq"])
        return dict(out)

    def redeliveries(self) -> int:
        """Messages the broker re-sent to this subscriber (DUP set): not the agent's doing."""
        with self._lock:
            return sum(dup for _, _, dup in self.records)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def gaps_and_duplicates(seqs: dict[str, list[int]], last: dict[str, int]) -> tuple[int, int]:
    """(missing seqs from 1 to `last`, extra copies) summed over devices."""
    missing = duplicates = 0
    for device, final in last.items():
        counts = Counter(seqs.get(device, []))
        missing += sum(1 for seq in range(1, final + 1) if seq not in counts)
        duplicates += sum(n - 1 for n in counts.values())
    return missing, duplicates


def buffer_state(path: Path) -> tuple[dict[str, int], int]:
    """(persisted seq per device, rows kept) read straight from the agent's SQLite file."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        seqs = dict(db.execute("SELECT device, seq FROM seqs"))
        kept = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        db.close()
    return seqs, kept


def events(agent: Any, name: str) -> list[dict[str, Any]]:
    return [line for line in agent.log_lines() if line.get("event") == name]


def agent_config(sims: Any, url: str | list[str], buffer: Path | None, **mqtt: Any) -> dict:
    config = sims.agent_config(url if isinstance(url, str) else url[0])
    config["mqtt"]["url"] = url
    config["mqtt"].update({"reconnect_max": 1.0, **mqtt})
    if buffer is not None:
        config["buffer"] = {"path": str(buffer)}
    config["shutdown_grace"] = 5
    return config


def sleep_through(seconds: float) -> None:
    """A scenario's duration (an outage that lasts N seconds), not a synchronisation."""
    time.sleep(seconds)
