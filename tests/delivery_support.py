"""Support for the delivery tests: a persistent subscriber, device specs, seq accounting."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
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


# -- disk faults -----------------------------------------------------------------------------
def closed_port_url() -> str:
    """A broker URL where nothing listens: the agent builds a backlog on disk."""
    from edge_agent_simulators.broker import free_port

    return f"mqtt://127.0.0.1:{free_port()}"


def flip_stored_bytes(path: Path, row_id: int, count: int = 4) -> tuple[str, int]:
    """Changes `count` bytes in the middle of one row's stored payload, in the file itself
    (SQLite does not checksum pages, so it cannot see this). Returns the row's (device, seq).
    The agent must be stopped (the WAL checkpointed into the file)."""
    with sqlite3.connect(path) as db:
        device, seq, stored = db.execute(
            "SELECT device, seq, payload FROM messages WHERE id = ?", (row_id,)).fetchone()
    db.close()
    flip_every_copy(path, stored, offset=len(stored) // 2, count=count)
    return device, seq


def flip_every_copy(path: Path, needle: bytes, offset: int, count: int = 4) -> None:
    """Changes `count` bytes at `offset` into every copy of `needle` in the file: damage
    SQLite cannot see (page contents are not checksummed). Every copy, since the buffer does
    not zero what it deletes or moves (`secure_delete` off): a page's free space may hold a
    stale one, and the live copy need not be the first."""
    data = bytearray(path.read_bytes())
    places = all_places(data, needle)
    assert places, "the stored bytes are not in the file"
    for at in places:
        for i in range(at + offset, at + offset + count):
            data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def all_places(data: bytes | bytearray, needle: bytes) -> list[int]:
    """Every offset of `needle` in `data`. The buffer does not zero what it deletes or
    moves (`secure_delete` off), so besides a row's live copy the file may hold stale ones
    in free space; damage meant for the row goes to each (a stale copy is never read)."""
    places, at = [], data.find(needle)
    while at >= 0:
        places.append(at)
        at = data.find(needle, at + 1)
    return places


def stored_rows(path: Path) -> list[tuple[int, str, int, int]]:
    """(id, device, seq, zipped) of every row in the buffer file."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, device, seq, zipped FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


class SmallFilesystem:
    """A tmpfs of `size` mounted for one test: made full or read-only for real (the tests
    run as root, which chmod does not stop). Skips the test where mounting is not allowed."""

    def __init__(self, where: Path, size: str = "4m") -> None:
        import pytest

        self.path = where
        where.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(where)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def fill(self, leave: int = 0) -> None:
        """Writes a filler file until the filesystem is full (less `leave` bytes)."""
        stat = os.statvfs(self.path)
        free = stat.f_bavail * stat.f_frsize - leave
        with contextlib.suppress(OSError), open(self.path / "filler", "wb") as f:
            f.write(b"\0" * max(0, free))
            f.write(b"\0" * (1 << 20))  # whatever is left, until ENOSPC
        assert leave or os.statvfs(self.path).f_bavail == 0

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def assert_no_seq_reused(records: list[tuple[str, bytes, bool]]) -> None:
    """A seq seen twice is always the very same message (a resend), never another reading."""
    by_seq: dict[tuple[str, int], bytes] = {}
    for _, payload, _ in records:
        message = json.loads(payload)
        key = (message["device"], message["seq"])
        assert by_seq.setdefault(key, payload) == payload, f"seq {key} reused"


class SilentBroker:
    """A real MQTT 3.1.1 server on a socket that accepts connections, subscriptions and
    pings, and takes every PUBLISH without ever acknowledging it: the agent stays connected
    and its pump stalls (what a wedged broker or a broken bridge looks like)."""

    def __init__(self) -> None:
        import socketserver

        self.publishes = 0
        broker = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                while True:
                    head = _read_exactly(sock, 1)
                    if not head:
                        return
                    length, shift = 0, 0
                    while True:
                        byte = _read_exactly(sock, 1)
                        if not byte:
                            return
                        length |= (byte[0] & 0x7F) << shift
                        shift += 7
                        if not byte[0] & 0x80:
                            break
                    body = _read_exactly(sock, length) if length else b""
                    kind = head[0] >> 4
                    if kind == 1:  # CONNECT -> CONNACK, session not present, accepted
                        sock.sendall(b"\x20\x02\x00\x00")
                    elif kind == 3:  # PUBLISH: taken, never acknowledged
                        broker.publishes += 1
                    elif kind == 8:  # SUBSCRIBE -> SUBACK granting QoS 0 to each filter
                        count, at = 0, 2
                        while at < len(body):
                            at += 2 + int.from_bytes(body[at:at + 2], "big") + 1
                            count += 1
                        sock.sendall(bytes([0x90, 2 + count]) + body[:2] + b"\x00" * count)
                    elif kind == 12:  # PINGREQ -> PINGRESP
                        sock.sendall(b"\xd0\x00")
                    elif kind == 14:  # DISCONNECT
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_exactly(sock: Any, count: int) -> bytes:
    data = b""
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except OSError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return data


def flip_blob_to_text(path: Path, row_id: int) -> None:
    """Flips the one bit in a row's record header that turns its payload's serial type from
    BLOB (2n+12) into TEXT (2n+13), in the file itself: what one flipped bit does. The
    payload bytes stay as they were (for JSON telemetry: not valid UTF-8 once compressed)."""
    with sqlite3.connect(path) as db:
        device, seq, topic, payload = db.execute(
            "SELECT device, seq, topic, payload FROM messages WHERE id = ?", (row_id,)).fetchone()
    db.close()
    body = device.encode() + _record_int(seq) + topic.encode() + payload
    data = bytearray(path.read_bytes())
    # header ... [payload type varint][zipped type][crc type] | body
    blob_type = 2 * len(payload) + 12
    varint = bytearray()
    value = blob_type
    varint.insert(0, value & 0x7F)
    while value := value >> 7:
        varint.insert(0, 0x80 | (value & 0x7F))
    flipped = 0
    for at in all_places(data, body):  # a stale copy's header may be gone: skip it
        start = at - 2 - len(varint)
        if data[start:at - 2] == varint:
            data[at - 3] |= 0x01  # 2n+12 -> 2n+13: TEXT
            flipped += 1
    assert flipped, "the row's record (with its header) is not in the file"
    path.write_bytes(bytes(data))


def _record_int(value: int) -> bytes:
    """An integer as SQLite's record format stores it (0 and 1 take no bytes)."""
    if value in (0, 1):
        return b""
    for size in (1, 2, 3, 4, 6, 8):
        if -(1 << (8 * size - 1)) <= value < (1 << (8 * size - 1)):
            return value.to_bytes(size, "big", signed=True)
    raise ValueError(value)
