"""MQTT publishing with paho-mqtt 2.x: the outbox pump, the connection manager, failover.

One network thread per connection attempt runs paho's `loop()`; publishes are written from
the event loop thread directly (paho does that when no loop thread of its own runs), and
acknowledgements come back to the event loop in batches. The publisher keeps at most
`mqtt.inflight` messages handed to paho; everything else waits in the outbox, so an outage
costs disk, not memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent import logs
from edge_agent.backoff import Backoff
from edge_agent.config import MqttConfig
from edge_agent.outbox import Outbox


def parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    tls = parts.scheme in ("mqtts", "ssl")
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


class MqttPublisher:
    def __init__(self, config: MqttConfig, client_id: str, outbox: Outbox,
                 will: tuple[str, bytes]) -> None:
        self.config = config
        self.outbox = outbox
        self.log = logs.get("edge_agent.mqtt")
        self.connected = asyncio.Event()
        self.on_connected: list[Callable[[], None]] = []
        self.on_message: Callable[[str, bytes], None] | None = None
        self.subscriptions: list[str] = []
        self.published = 0
        self.last_error: str | None = None
        self._loop = asyncio.get_running_loop()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._cursor = 0
        self._acks: deque[int] = deque()
        self._ack_scheduled = False
        self._stop_session = threading.Event()
        self._stop_event = asyncio.Event()
        self._emptied = asyncio.Event()
        self._stopping = False
        self._connack: asyncio.Future[Any] | None = None
        self._client = self._make_client(client_id, will)

    # -- client set-up -------------------------------------------------------------------
    def _make_client(self, client_id: str, will: tuple[str, bytes]) -> paho.Client:
        cfg = self.config
        if cfg.protocol == "5":
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=paho.MQTTv5)
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=paho.MQTTv311, clean_session=True)
        client.max_inflight_messages_set(cfg.inflight)
        client.max_queued_messages_set(0)
        client.will_set(will[0], will[1], qos=1, retain=True)
        if cfg.username:
            password = None
            if cfg.password_file:
                password = Path(cfg.password_file).read_text().rstrip("\r\n")
            client.username_pw_set(cfg.username, password)
        if any(parse_url(url)[2] for url in cfg.urls):
            tls = cfg.tls
            ca_file = str(tls.ca_file) if tls and tls.ca_file else None
            context = ssl.create_default_context(cafile=ca_file)
            if tls and tls.cert_file:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            if tls and tls.insecure:
                context.check_hostname = False
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message_thread
        return client

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connack is not None:
            self._loop.call_soon_threadsafe(_set_result, self._connack, reason_code)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._stop_session.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append(mid)
        if not self._ack_scheduled:
            self._ack_scheduled = True
            self._loop.call_soon_threadsafe(self._drain_acks)

    def _on_message_thread(self, client, userdata, message) -> None:
        if self.on_message is not None:
            self._loop.call_soon_threadsafe(self.on_message, message.topic, message.payload)

    # -- event loop side -----------------------------------------------------------------
    def _drain_acks(self) -> None:
        self._ack_scheduled = False
        ids = []
        acks, inflight = self._acks, self._inflight
        while acks:
            row_id = inflight.pop(acks.popleft(), None)
            if row_id is not None:
                ids.append(row_id)
        if ids:
            self.outbox.ack(ids)
            self.published += len(ids)
            if not self.outbox.depth():
                self._emptied.set()
        self.pump()

    def pump(self) -> None:
        """Hands outbox messages to paho while the in-flight window has room."""
        if not self.connected.is_set():
            return
        room = self.config.inflight - len(self._inflight)
        if room <= 0:
            return
        qos = self.config.qos
        publish = self._client.publish
        for row in self.outbox.fetch(self._cursor, room):
            info = publish(row.topic, row.payload, qos=qos)
            self._inflight[info.mid] = row.id
            self._cursor = row.id

    def publish_state(self, topic: str, payload: bytes) -> paho.MQTTMessageInfo | None:
        """Publishes a retained state message (statuses); dropped while disconnected, since
        the current state is republished on every connect."""
        if not self.connected.is_set():
            return None
        return self._client.publish(topic, payload, qos=1, retain=True)

    def publish_now(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publishes a message outside the outbox (command results), if connected."""
        if self.connected.is_set():
            self._client.publish(topic, payload, qos=qos)

    async def run(self) -> None:
        """Connects, and reconnects through the URL list with backoff, until stopped."""
        backoff = Backoff()
        urls = self.config.urls
        attempt = 0
        while not self._stopping:
            url = urls[attempt % len(urls)]
            host, port, _ = parse_url(url)
            outcome = await self._session(url, host, port)
            if self._stopping:
                break
            if outcome == "lost":
                backoff.reset()
                attempt = 0 if len(urls) == 1 else attempt
            else:
                attempt += 1
            delay = backoff.next()
            self.log.warning("mqtt_retry", url=url, problem=outcome, retry_in=round(delay, 2))
            await self._sleep(delay)

    async def _session(self, url: str, host: str, port: int) -> str:
        """One connection, from connect to loss. Returns why it ended."""
        self._stop_session.clear()
        self._connack = self._loop.create_future()
        client = self._client
        try:
            await self._loop.run_in_executor(None, client.connect, host, port,
                                             self.config.keepalive)
        except ssl.SSLError as exc:
            return self._fail(url, f"TLS failure: {exc.reason or exc}")
        except OSError as exc:
            return self._fail(url, f"cannot connect: {exc.strerror or exc}")
        thread = threading.Thread(target=self._network, name="mqtt-network", daemon=True)
        thread.start()
        try:
            reason = await asyncio.wait_for(asyncio.shield(self._connack), self.config.keepalive)
        except TimeoutError:
            reason = None
        if reason is None or reason.is_failure:
            self._stop_session.set()
            await self._loop.run_in_executor(None, thread.join)
            text = "no CONNACK" if reason is None else f"broker refused the connection: {reason}"
            return self._fail(url, text)
        self.last_error = None
        self.log.info("mqtt_connected", url=url)
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()
        for callback in self.on_connected:
            callback()
        self._cursor = max(self._inflight.values(), default=self._cursor)
        self.pump()
        await self._loop.run_in_executor(None, thread.join)
        self.connected.clear()
        if not self._stopping:
            self.last_error = "connection lost"
            self.log.warning("mqtt_disconnected", url=url)
        return "lost"

    def _fail(self, url: str, text: str) -> str:
        self.last_error = text
        self.log.error("mqtt_connect_failed", url=url, error=text)
        return text

    def _network(self) -> None:
        client = self._client
        while not self._stop_session.is_set():
            if client.loop(timeout=1.0) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._stop_session.set()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), delay)

    async def drain(self, timeout: float) -> bool:
        """Waits until the outbox is empty (True) or the timeout passes (False)."""
        self._emptied.clear()
        if self.outbox.depth():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout)
        return not self.outbox.depth()

    async def stop(self, final: tuple[str, bytes] | None) -> None:
        """Publishes the final (offline) state if connected, then disconnects."""
        self._stopping = True
        self._stop_event.set()
        if self.connected.is_set() and final is not None:
            info = self._client.publish(final[0], final[1], qos=1, retain=True)
            await self._loop.run_in_executor(None, info.wait_for_publish, 2.0)
        if self.connected.is_set():
            self._client.disconnect()
        self._stop_session.set()


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
