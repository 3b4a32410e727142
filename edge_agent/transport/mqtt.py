"""MQTT publishing with paho-mqtt 2.x: the outbox pump, the connection manager, failover.

Design, and why:
- One paho client per connection (a *session*), driven by the event loop itself: paho's
  `loop_read`/`loop_write`/`loop_misc` run from `add_reader`/`add_writer` callbacks and a 1 s
  timer, and `publish()` writes straight to the socket. No network thread: every socket
  operation (plain or SSL) happens on the loop thread, and a reading costs no thread
  hand-offs or wake-up pipes (only the blocking `connect()`, when nothing else touches the
  client, runs in an executor).
- The in-flight window (`mqtt.inflight` messages handed to paho, not yet acknowledged) dies
  with its session. The next session replays the outbox from its oldest row, in id order, so
  delivery stays in order per device and the only duplicates are that window's messages.
  (Letting paho re-send its own window on reconnect would race with new publishes and could
  reorder them.)
- Acknowledgements (PUBACK for QoS 1, PUBCOMP for QoS 2, "written" for QoS 0) come back to
  the event loop in batches (every PUBACK of one socket read at once); only then are rows
  deleted from the outbox.
- The client is `LeanClient`: paho with shorter roads for a QoS 1 PUBLISH and its PUBACK,
  the one message per poll this module sends (see `edge_agent.transport.lean_paho`).
- Backlog and live data share the window in id order: after an outage the backlog drains at
  the broker's acknowledgement rate and new readings queue behind it on disk. That is the
  only policy that keeps the contract's "in order per device"; polling itself never waits
  for the broker (see docs/delivery.md for the figures).
- The publisher knows no payload format: the will, the subscriptions, what to publish on
  connect and how an outbox row becomes a message are the `Wire`'s (an output of
  `edge_agent.outputs`); commands arriving go to `on_message` untouched.
- Broker URLs are tried in order; a round that fails everywhere waits with exponential
  backoff and jitter; after a lost connection the next round starts again at the first URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
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
from edge_agent.transport.base import Message, SessionWatch, Wire
from edge_agent.transport.lean_paho import LeanClient

#: extra paho in-flight slots for retained status messages, so they never wait on telemetry
STATE_HEADROOM = 16
#: CONNACK reasons that mean the credentials are wrong (MQTT 3.1.1 and 5 names)
AUTH_REFUSALS = ("Bad user name or password", "Not authorized", "Bad authentication method")


def parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    tls = parts.scheme in ("mqtts", "ssl")
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


def _send_at_once(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Turns Nagle's algorithm off on the broker connection (paho leaves it on).

    Why: with it, a write waits while an earlier one is unacknowledged, and a broker that has
    nothing to send back (QoS 0: no PUBACK) acknowledges only when the kernel's delayed-ACK
    timer fires. On the peer rig QoS 0 telemetry reached the subscriber 41-42 ms after the
    read (p50), against 2.3-2.4 ms at QoS 1 (docs/performance.md, "QoS 0"). A websocket
    connection (paho's wrapper has no socket options) and a Unix socket keep the default.
    """
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is not None:
        with contextlib.suppress(OSError):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Session:
    """One paho client and one connection; its in-flight window dies with it."""

    def __init__(self, url: str, client: LeanClient, loop: asyncio.AbstractEventLoop) -> None:
        self.url, self.client = url, client
        self.inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self.cursor = 0  # highest outbox id handed to this session
        self.connack: asyncio.Future[Any] = loop.create_future()
        self.ended = asyncio.Event()
        self.fd: int | None = None  # registered with the event loop while connected
        self.writing = False  # add_writer registered: paho has bytes the socket did not take
        self.misc: asyncio.TimerHandle | None = None
        self.problem: str | None = None  # last error paho reported (e.g. a late TLS alert)
        self.rejected = 0
        self.reason_code: int | None = None  # of the broker's DISCONNECT (MQTT 5), if any


#: (topic, payload, retained) of a message the broker delivered to a subscription
MessageHandler = Callable[[str, bytes, bool], None]
#: outbox ids the broker acknowledged, on the event loop
AckHandler = Callable[[list[int]], None]


class MqttPublisher:
    """Pumps the outbox to the broker through `wire`, and reconnects until stopped.

    Implements `edge_agent.transport.base.Link` for the output it carries.
    """

    def __init__(self, config: MqttConfig, client_id: str, outbox: Outbox, wire: Wire, *,
                 on_message: MessageHandler | None = None,
                 on_acked: AckHandler | None = None,
                 watch: SessionWatch | None = None) -> None:
        self.config = config
        self.client_id = client_id
        self.outbox = outbox
        self.wire = wire
        self.log = logs.get("edge_agent.mqtt")
        self.connected = asyncio.Event()
        self.on_message = on_message
        self.on_acked = on_acked
        self.watch = watch
        self.published = 0
        #: seconds between housekeeping ticks (paho's keepalive, the stall check): a sixth
        #: of the keepalive, at least 1 s. A PINGREQ goes out at most that late, well inside
        #: the broker's 1.5 x keepalive; an idle agent wakes 6 times less often at 30 s.
        self.tick = max(1.0, config.keepalive / 6)
        #: monotonic time of the last sign that the outbox moves: an acknowledgement, an
        #: empty outbox, a new connection (checked every tick; see stalled_for)
        self._progressed = time.monotonic()
        self._published_seen = 0
        self.rejected = 0  # MQTT 5 PUBACKs with a failure reason: the broker will not take it
        self.last_error: str | None = None
        self.url: str | None = None  # the broker currently connected to
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._session: _Session | None = None
        self._acks: deque[tuple[_Session, int, Any]] = deque()
        self._ack_scheduled = False
        self._reading = False  # in loop_read: its acknowledgements are drained right after
        #: the last pump stopped with the window full (or could not pump): rows may wait
        self._rows_waiting = True
        self._stop_event = asyncio.Event()
        self._emptied = asyncio.Event()
        self._stopping = False
        self._held_back: float | None = None  # the watch's delay after the last session

    # -- client set-up (per session, so rotated passwords and certificates are picked up) --
    def _make_client(self, tls: bool) -> LeanClient:
        cfg = self.config
        if cfg.protocol == "5":
            client = LeanClient(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                protocol=paho.MQTTv5)
        else:
            client = LeanClient(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                protocol=paho.MQTTv311, clean_session=True)
        client.max_inflight_messages_set(cfg.inflight + STATE_HEADROOM)
        client.max_queued_messages_set(0)
        will = self.wire.will()  # asked per connection: Sparkplug's carries a new bdSeq
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if cfg.username:
            client.username_pw_set(cfg.username, self._password())
        if tls:
            client.tls_set_context(self._tls_context())
            if cfg.tls and cfg.tls.insecure:
                client.tls_insecure_set(True)
        client.on_socket_open = _send_at_once
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message_thread
        client.on_log = self._on_log
        return client

    def _password(self) -> str | None:
        path = self.config.password_file
        if path is None:
            return None
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise _SetupError(f"cannot read mqtt.password_file {path}: "
                              f"{exc.strerror or exc}") from None

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        try:
            context = ssl.create_default_context(
                cafile=str(tls.ca_file) if tls and tls.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise _SetupError(f"TLS setup failed: cannot load mqtt.tls.ca_file "
                              f"{tls.ca_file if tls else ''}: {_ssl_text(exc)}") from None
        if tls and tls.cert_file:
            try:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise _SetupError(f"TLS setup failed: cannot load mqtt.tls.cert_file/key_file "
                                  f"{tls.cert_file}: {_ssl_text(exc)}") from None
        if tls and tls.insecure:
            context.check_hostname = False
        return context

    # -- paho callbacks (event loop thread; on_log also during connect, in the executor) ---
    def _on_connect(self, client, session, flags, reason_code, properties) -> None:
        _set_result(session.connack, reason_code)  # before a refusal ends the session

    def _on_disconnect(self, client, session, flags, reason_code, properties) -> None:
        if getattr(reason_code, "is_failure", False) and session.problem is None:
            session.problem = f"broker disconnected: {reason_code}"
        if self.config.protocol == "5" and session.reason_code is None:
            # the broker's DISCONNECT reason (3.1.1 has none); the first report is that packet
            session.reason_code = getattr(reason_code, "value", None)
        self._call_soon(self._end, session)

    def _on_publish(self, client, session, mid, reason_code, properties) -> None:
        self._acks.append((session, mid, reason_code))
        if not self._ack_scheduled and not self._reading:
            self._ack_scheduled = True
            self._call_soon(self._drain_acks)

    def _on_message_thread(self, client, userdata, message) -> None:
        # Whether a retained message counts (a stale command, or a host's STATE) is the
        # output's to decide: it gets the flag.
        if self.on_message is None:
            return
        try:
            topic = message.topic  # paho decodes it here; a broker should have checked UTF-8
        except UnicodeDecodeError:
            self.log.warning("mqtt_message_unreadable_topic")
            return
        self._call_soon(self.on_message, topic, message.payload, bool(message.retain))

    def _on_log(self, client, session, level, text) -> None:
        if level == paho.MQTT_LOG_ERR:
            session.problem = text

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Runs `callback` on the loop, after paho's callback has returned: publishing from
        inside a paho callback would only queue the packet."""
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing left to tell
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(callback, *args)
            else:
                self._loop.call_soon_threadsafe(callback, *args)

    # -- socket I/O on the event loop ----------------------------------------------------
    def _attach(self, session: _Session) -> None:
        sock = session.client.socket()
        if sock is None:  # paho already lost it, e.g. writing CONNECT hit a TLS alert
            self._end(session)
            return
        # Registered by number: paho may close the socket object before the loop forgets it.
        session.fd = sock.fileno()
        self._loop.add_reader(session.fd, self._readable, session)
        session.misc = self._loop.call_later(self.tick, self._housekeeping, session)
        self._flush(session)
        # An SSL socket may hold bytes the handshake already read (a TLS 1.3 alert, even the
        # CONNACK): the fd will not turn readable for those, so read once now.
        self._loop.call_soon(self._readable, session)

    def _detach(self, session: _Session) -> None:
        if session.misc is not None:
            session.misc.cancel()
            session.misc = None
        if session.fd is not None:
            if session.writing:  # both at once: never a watch left half changed
                self._loop.remove_writer(session.fd)
            self._loop.remove_reader(session.fd)
            session.fd, session.writing = None, False
        session.client.loop_write()  # best effort for a queued DISCONNECT
        with contextlib.suppress(Exception):
            session.client._sock_close()  # paho has no public close

    def _readable(self, session: _Session) -> None:
        if session.fd is None:
            return
        self._reading = True  # on the loop thread: paho calls _on_publish from loop_read
        try:
            rc = session.client.loop_read()
        finally:
            self._reading = False
        self._check(session, rc)
        if self._acks and not self._ack_scheduled:
            self._drain_acks()  # after paho's callback returned, so publishing writes
        sock = session.client.socket()
        if session.fd is not None and isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._loop.call_soon(self._readable, session)  # decrypted bytes left in SSL

    def _writable(self, session: _Session) -> None:
        self._check(session, session.client.loop_write())

    def _housekeeping(self, session: _Session) -> None:
        """paho's keepalive: PINGREQ when due, and the connection's death when PINGRESP is late."""
        session.misc = self._loop.call_later(self.tick, self._housekeeping, session)
        if self.published != self._published_seen or not self.outbox.depth():
            self._published_seen = self.published
            self._progressed = time.monotonic()
        self._check(session, session.client.loop_misc())

    def stalled_for(self) -> float:
        """Seconds messages have waited while connected with none acknowledged; 0 when the
        outbox moves. Past `mqtt.keepalive` the pump is stalled (/readyz says so)."""
        if not self.connected.is_set() or not self.outbox.depth():
            return 0.0
        return max(0.0, time.monotonic() - self._progressed - self.tick)  # the check's period

    def _check(self, session: _Session, rc: MQTTErrorCode) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost(session, rc)
            return
        self._flush(session)

    def _lost(self, session: _Session, rc: MQTTErrorCode) -> None:
        """A paho call failed or dropped the socket: the session ends, saying why."""
        if session.problem is None and rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS,
                                                  MQTTErrorCode.MQTT_ERR_NO_CONN):
            session.problem = paho.error_string(rc)
        self._end(session)

    def _flush(self, session: _Session) -> None:
        """Writes what paho queued; waits for the socket to drain when it takes less.

        Any paho call that writes (`publish`, `loop_write`) may find the connection gone
        and close the socket there and then. The loop must forget the descriptor at once:
        asking it to watch a closed descriptor for writing makes libuv (uvloop) abort the
        whole process at its next poll, so a dropped socket ends the session here.
        """
        client = session.client
        if session.fd is None:
            return
        if client.socket() is None:
            self._end(session)
            return
        if not client.want_write():
            return
        if not session.writing:
            rc = client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
                self._lost(session, rc)
                return
            if not client.want_write():
                return
            session.writing = True
            self._loop.add_writer(session.fd, self._writable, session)
        elif not client.want_write():
            session.writing = False
            self._loop.remove_writer(session.fd)

    def _end(self, session: _Session) -> None:
        if not session.ended.is_set():
            session.ended.set()
            self._detach(session)
            _set_result(session.connack, None)

    # -- event loop side -----------------------------------------------------------------
    def _drain_acks(self) -> None:
        self._ack_scheduled = False
        ids = []
        acks = self._acks
        while acks:
            session, mid, reason = acks.popleft()
            row_id = session.inflight.pop(mid, None)
            if row_id is None:
                continue
            ids.append(row_id)
            if getattr(reason, "is_failure", False):
                self._rejected(session, reason)
        if ids:
            self.outbox.ack(ids)
            self.published += len(ids)
            if self.on_acked is not None:
                self.on_acked(ids)
            if not self.outbox.depth():
                self._emptied.set()
        if self._rows_waiting:  # else new rows come with Delivery.flush, which pumps
            self.pump()

    def _rejected(self, session: _Session, reason: Any) -> None:
        """An MQTT 5 broker refused a message (e.g. not authorised for the topic): resending
        it would be refused again, so it leaves the buffer, counted and logged."""
        self.rejected += 1
        session.rejected += 1
        if session.rejected == 1:
            self.log.error("mqtt_publish_rejected", url=session.url, reason=str(reason))

    def pump(self) -> None:
        """Hands outbox rows to paho while the in-flight window has room.

        Rows are encoded by the wire as they are handed over (Sparkplug's seq belongs to the
        connection). A row that encodes to nothing (no change to report) leaves at once.
        """
        session = self._session
        if (session is None or session.ended.is_set() or not self.connected.is_set()
                or not self.wire.ready()):
            self._rows_waiting = True
            return
        encode = self.wire.encode
        client = session.client
        publish, inflight = client.publish, session.inflight
        while (room := self.config.inflight - len(inflight)) > 0:
            rows = self.outbox.fetch(session.cursor, room)
            skipped = []
            set_aside = 0
            client.cork()  # the batch's PUBLISHes leave in one write
            try:
                for row in rows:
                    session.cursor = row.id
                    try:
                        message = encode(row)
                    except Exception as exc:  # this row, not the backlog: set aside, go on
                        self.outbox.quarantine(row, f"does not encode: {exc!r}")
                        set_aside += 1
                        continue
                    if message is None:
                        skipped.append(row.id)
                    else:
                        topic, payload, qos, retain = message
                        inflight[publish(topic, payload, qos, retain).mid] = row.id
            finally:
                client.uncork()
            self._flush(session)
            if session.ended.is_set():  # the connection dropped under the writes
                return
            if skipped:
                self.outbox.ack(skipped)
                if not self.outbox.depth():
                    self._emptied.set()
            if len(rows) < room:
                self._rows_waiting = False  # the outbox had no more after the cursor
                return
            if not (skipped or set_aside):
                break
        self._rows_waiting = True  # the window is full: the next acknowledgement pumps

    def disconnect(self) -> None:
        """Ends the current connection on purpose; `run()` then connects again."""
        session = self._session
        if session is not None:
            session.client.disconnect()
            self._flush(session)

    def is_connected(self) -> bool:
        return self.connected.is_set()

    def publish_state(self, topic: str, payload: bytes) -> None:
        """Publishes a retained state message (statuses); dropped while disconnected, since
        the current state is republished on every connect."""
        self.publish_now(Message(topic, payload, qos=1, retain=True))

    def publish_now(self, message: Message) -> None:
        """Publishes a message outside the outbox (births, command results), if connected."""
        session = self._session
        if session is not None and self.connected.is_set():
            session.client.publish(message.topic, message.payload, qos=message.qos,
                                   retain=message.retain)
            self._flush(session)

    async def run(self) -> None:
        """Connects, and reconnects through the URL list with backoff, until stopped."""
        backoff = Backoff(initial=0.5, maximum=self.config.reconnect_max)
        while not self._stopping:
            for url in self.config.urls:
                try:
                    problem = await self._session_run(url)
                except Exception as exc:  # a bug here must not end publishing for good
                    self.log.exception("mqtt_session_crashed", url=url)
                    problem = self._fail(url, f"internal error: {exc!r}")
                if self._stopping:
                    return
                if problem is None:  # was connected, then lost: start over at the first URL
                    backoff.reset()
                    held = self._held_back
                    if held:
                        self.log.info("mqtt_reconnect_held_back", retry_in=round(held, 2),
                                      error=self.last_error)
                        await self._sleep(held)
                    break
            delay = backoff.next()
            self.log.info("mqtt_retrying", retry_in=round(delay, 2), error=self.last_error)
            await self._sleep(delay)

    async def _session_run(self, url: str) -> str | None:
        """One connection to `url`, from connect to loss. Returns the failure, or None if it
        was connected."""
        host, port, tls = parse_url(url)
        try:
            client = self._make_client(tls)
        except _SetupError as exc:
            return self._fail(url, str(exc))
        session = _Session(url, client, self._loop)
        client.user_data_set(session)
        try:
            await self._loop.run_in_executor(None, self._connect, client, host, port)
        except ssl.SSLCertVerificationError as exc:
            return self._fail(url, f"TLS failure: certificate verify failed: "
                              f"{exc.verify_message} (check mqtt.tls.ca_file and the "
                              f"broker's certificate)")
        except ssl.SSLError as exc:
            return self._fail(url, f"TLS failure: {_ssl_text(exc)}")
        except OSError as exc:
            return self._fail(url, f"cannot connect: {exc.strerror or exc}")
        self._attach(session)
        try:
            reason = await asyncio.wait_for(asyncio.shield(session.connack),
                                            self.config.keepalive)
        except TimeoutError:
            reason = None
        if reason is None or reason.is_failure:
            self._end(session)
            tls = parse_url(url)[2]
            no_cert = tls and not (self.config.tls and self.config.tls.cert_file)
            return self._fail(url, _refusal_text(reason, session.problem, no_cert))
        self._session, self.url = session, url
        self.last_error = None
        self.log.info("mqtt_connected", url=url, protocol=self.config.protocol,
                      backlog=self.outbox.depth())
        for topic in self.wire.subscriptions():
            client.subscribe(topic, qos=1)
        self._flush(session)
        self._progressed = time.monotonic()
        self.connected.set()
        if self.watch is not None:
            self.watch.session_started(url)
        self.wire.on_connected()
        self.pump()
        await session.ended.wait()
        self.connected.clear()
        self._session, self.url = None, None
        self._held_back = None
        if self.watch is not None and not self._stopping:
            self._held_back = self.watch.session_ended(session.reason_code)
        if not self._stopping:
            self.last_error = f"connection lost: {session.problem or 'closed by the broker'}"
            self.log.warning("mqtt_disconnected", url=url, error=self.last_error,
                             unacknowledged=len(session.inflight))
        return None

    def _connect(self, client: paho.Client, host: str, port: int) -> None:
        if self.config.protocol == "5":
            client.connect(host, port, self.config.keepalive, clean_start=True)
        else:
            client.connect(host, port, self.config.keepalive)

    def _fail(self, url: str, text: str) -> str:
        self.last_error = text
        self.log.error("mqtt_connect_failed", url=url, error=text)
        return text

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

    async def stop(self, final: Message | None) -> None:
        """Publishes `final` (the output's goodbye: offline status, NDEATH) if connected and
        waits for its acknowledgement, then disconnects cleanly (so the broker does not send
        the will). Unacknowledged messages stay in the outbox."""
        self._stopping = True
        self._stop_event.set()
        session = self._session
        if session is None:
            return
        if self.connected.is_set() and final is not None:
            info = session.client.publish(final.topic, final.payload, qos=final.qos,
                                          retain=final.retain)
            self._flush(session)
            with contextlib.suppress(ValueError, RuntimeError):
                # the PUBACK is read by this loop while the executor thread waits for it
                await self._loop.run_in_executor(None, info.wait_for_publish, 2.0)
        session.client.disconnect()
        self._flush(session)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.ended.wait(), 2.0)
        self._end(session)


class _SetupError(Exception):
    """The client cannot even be configured (unreadable password or certificate file)."""


def _ssl_text(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def _refusal_text(reason: Any, problem: str | None, no_client_cert: bool = False) -> str:
    if reason is None:
        # TLS 1.3 refuses a missing client certificate only after the handshake: the agent
        # reads the broker's alert, or, when the broker's reset overtakes the alert, just the
        # connection ending. Both mean the same to an operator who configured no certificate.
        if no_client_cert and problem and (
                "EOF occurred in violation of protocol" in problem or "reset" in problem):
            return ("TLS failure: the broker requires a client certificate or rejected the "
                    "TLS session (set mqtt.tls.cert_file and key_file if it needs one): "
                    f"{problem}")
        if problem and "CERTIFICATE_REQUIRED" in problem:
            return (f"TLS failure: the broker requires a client certificate (set "
                    f"mqtt.tls.cert_file and key_file): {problem}")
        if problem and "[SSL" in problem:
            return f"TLS failure: {problem}"
        return f"no CONNACK: {problem}" if problem else "no CONNACK from the broker"
    text = f"broker refused the connection: {reason}"
    if str(reason) in AUTH_REFUSALS:
        return f"authentication failed: {text} (check mqtt.username and mqtt.password_file)"
    return text


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
