"""paho-mqtt's Client with shorter roads for telemetry: QoS 0/1 PUBLISH out, PUBACK in.

Why: on the peer rig (one QoS 1 message per poll, ~100 a second) paho's per-message work was
the largest item of the agent's main thread (cProfile, docs/performance.md): each PUBACK is
read with three `recv` calls, decoded into a new ReasonCode and a new Properties object even
on MQTT 3.1.1, and logged through `_easy_log`; each publish validates, logs and packs the
packet through several layers. This subclass keeps paho for everything else (connect, TLS,
keepalive, subscriptions, the will, MQTT 5 properties and failure reason codes, QoS 2,
queueing while the in-flight window is full or the client is not connected) and takes a
shorter road only where the outcome is the same:

- `loop_read` takes what the socket holds with one `recv` and frames every complete packet
  in it. A PUBACK without properties (MQTT 3.1.1's, or MQTT 5's with at most a reason code)
  goes to paho's `_do_on_publish` with a shared ReasonCode for its reason and one shared
  empty Properties (read-only for callbacks); every other packet goes to paho's
  `_packet_handle` exactly as paho's own reader hands it over. A partial packet waits for
  the next read.
- `publish` packs a QoS 1 PUBLISH without properties in one go when it can go out now
  (connected, room in the in-flight window, no queue limit), with the same MQTTMessage
  bookkeeping paho keeps, and writes it to the socket itself when nothing is queued before
  it (else, and from inside a callback, it goes to paho's `_packet_queue`).
- A QoS 0 PUBLISH without properties takes the same road (paho sends QoS 0 whatever the
  window and the queue limit): once the socket has taken the whole packet, `on_publish`
  gets the call paho's writer makes (the mid, Success, no properties) and the message info
  is marked published; a packet the socket takes only in part goes to paho's queue, whose
  writer makes that call when it has written the rest. So QoS 0 publishes are corked into
  one write too (Sparkplug's births and the agent at `mqtt.qos: 0`).

What differs: paho's DEBUG log lines for those PUBLISH and PUBACK packets are not produced
(errors are logged as before).

The roads use paho internals (`_in_packet`, `_packet_handle`, `_do_on_publish`,
`_out_messages`, `_out_packet`, `_packet_queue`, `_loop_rc_handle`, ...), so they are taken
only with the paho-mqtt release they were read against (`KNOWN_PAHO`); with any other the
client is plain paho. tests/test_mqtt_lean.py fails when the installed paho is another
release, and runs both roads against paho's own code and Mosquitto on MQTT 3.1.1 and 5.
"""

from __future__ import annotations

import struct
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import MessageState, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: the paho-mqtt release whose internals the short roads were checked against
KNOWN_PAHO = "2.2.0"
LEAN = paho_version == KNOWN_PAHO

#: bytes asked of the socket per read: every PUBACK a burst of publishes brings back
READ_SIZE = 65536
_PUBLISH = 0x30
_PUBACK = 0x40
_MAX_PAYLOAD = 268435455
_U16 = struct.Struct("!H")
_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
#: what paho passes on_publish for a PUBACK without properties: its reason (MQTT 5 may
#: send one, e.g. Mosquitto's "No matching subscribers"; none means Success) and no properties
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


def _puback_reasons() -> dict[int, ReasonCode]:
    reasons = {}
    for code in range(256):
        reason = ReasonCode(PacketTypes.PUBACK)
        try:
            reason.unpack(bytes((code,)))
        except (KeyError, ValueError):  # not a PUBACK reason: paho's reader says so
            continue
        reasons[code] = reason
    return reasons


_PUBACK_REASONS = _puback_reasons()
_PUBACK_OK = _PUBACK_REASONS[0]
_API2 = paho.CallbackAPIVersion.VERSION2


class LeanClient(paho.Client):
    """A paho Client (callback API 2) whose QoS 0/1 PUBLISH and PUBACK take short roads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()  # bytes read, not yet a whole packet
        self._v5 = self._protocol == paho.MQTTv5
        #: while corked: the PUBLISH packets held for one write (packet, mid, info, qos)
        self._held: list[tuple[bytes, int, paho.MQTTMessageInfo, int]] | None = None

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf = bytearray()  # what the old connection left is not this one's
        return super().reconnect()

    # -- PUBLISH out --------------------------------------------------------------------
    def publish(self, topic: str, payload: paho.PayloadType = None, qos: int = 0,
                retain: bool = False,
                properties: Properties | None = None) -> paho.MQTTMessageInfo:
        if (not LEAN or properties is not None or self._sock is None or not topic
                or type(payload) is not bytes or len(payload) > _MAX_PAYLOAD
                or not self._goes_out_now(qos)):
            self._release_held()  # paho's road writes at once: what is held goes first
            return super().publish(topic, payload, qos, retain, properties)
        topic_bytes = topic.encode("utf-8")
        if b"+" in topic_bytes or b"#" in topic_bytes or len(topic_bytes) > 65535:
            self._release_held()
            return super().publish(topic, payload, qos, retain, properties)  # raises
        mid = self._mid_generate()
        if qos == 0:
            info = paho.MQTTMessageInfo(mid)
            info.rc = self._send_now(
                self._publish_packet(topic_bytes, payload, 0, retain, mid), mid, info, 0)
            return info
        message = paho.MQTTMessage(mid, topic_bytes)
        message.timestamp = paho.time_func()
        message.payload = payload
        message.qos = 1
        message.retain = retain
        info = message.info
        with self._out_message_mutex:
            if mid in self._out_messages:
                info.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
                return info
            self._out_messages[mid] = message
            self._inflight_messages += 1
            message.state = MessageState.MQTT_MS_WAIT_FOR_PUBACK
            packet = self._publish_packet(topic_bytes, payload, 1, retain, mid)
            rc = self._send_now(packet, mid, info, 1)
            if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:  # as paho: sent again on reconnect
                self._inflight_messages -= 1
                message.state = MessageState.MQTT_MS_PUBLISH
            info.rc = rc
            return info

    def _publish_packet(self, topic: bytes, payload: bytes, qos: int, retain: bool,
                        mid: int) -> bytes:
        """The PUBLISH paho's `_send_publish` packs, without properties (QoS 0 has no mid)."""
        mid_bytes = _U16.pack(mid) if qos else b""
        return b"".join((
            bytes((_PUBLISH | qos << 1 | retain,)),
            self._pack_remaining_length(
                bytearray(), 2 + len(topic) + len(mid_bytes) + len(payload) + self._v5),
            _U16.pack(len(topic)), topic, mid_bytes,
            b"\x00" if self._v5 else b"",  # MQTT 5: no properties
            payload))

    def _goes_out_now(self, qos: int) -> bool:
        """Whether paho would send a message of this QoS at once: QoS 0 always (its report
        is made here for callback API 2 only), QoS 1 with room in the in-flight window and
        no queue limit."""
        if qos == 0:
            return self._callback_api_version is _API2
        return qos == 1 and not self._max_queued_messages and not (
            0 < self._max_inflight_messages <= self._inflight_messages)

    def _send_now(self, packet: bytes, mid: int, info: paho.MQTTMessageInfo,
                  qos: int) -> MQTTErrorCode:
        """paho's `_packet_queue` then `loop_write`, for a packet with nothing queued before
        it, no network thread and no write callbacks: straight to the socket (or held for
        `uncork`), and what the socket does not take is queued for `loop_write` as paho
        would leave it."""
        if (self._out_packet or self._thread is not None or self._sockpairW is not None
                or self._on_socket_register_write is not None
                or not self._in_callback_mutex.acquire(False)):  # in a callback: queue
            self._release_held()
            return self._packet_queue(_PUBLISH, packet, mid, qos, info)
        self._in_callback_mutex.release()
        if self._held is not None:
            self._held.append((packet, mid, info, qos))
            return _OK
        return self._write([(packet, mid, info, qos)], packet)

    # -- several PUBLISHes, one write ---------------------------------------------------
    def cork(self) -> None:
        """Holds the PUBLISH packets `publish` would write to the socket until `uncork`.

        Why: each write to a broker on the same host wakes it, and the kernel charges that
        wake-up to the writer; a flush that publishes several units' readings writes them
        in one `send`, and the broker answers with their PUBACKs in one read. Nothing else
        changes: a publish that takes paho's road (or must queue) writes what is held
        first, so packets leave in the order they were published.
        """
        if self._held is None:
            self._held = []

    def uncork(self) -> MQTTErrorCode:
        """Writes what `cork` held, in one `send`; the rest goes to paho's queue."""
        rc = self._release_held()
        self._held = None
        return rc

    def _release_held(self) -> MQTTErrorCode:
        """Writes what is held now (the cork stays as it is)."""
        if not self._held:
            return _OK
        held, self._held = self._held, []
        return self._write(held, b"".join([packet for packet, _, _, _ in held]))

    def _write(self, packets: list[tuple[bytes, int, paho.MQTTMessageInfo, int]],
               data: bytes) -> MQTTErrorCode:
        """`data` (the packets, joined) to the socket; what it does not take is queued
        packet by packet for `loop_write`, as paho would leave it. Each QoS 0 packet the
        socket took whole is published, as paho's writer reports it."""
        try:
            sent = self._sock_send(data)
        except BlockingIOError:
            sent = 0
        except (OSError, AttributeError, ValueError):  # paho's writer reports it its way
            rc = _OK
            for packet, mid, info, qos in packets:
                rc = self._packet_queue(_PUBLISH, packet, mid, qos, info)
            return rc
        if sent:
            with self._msgtime_mutex:
                self._last_msg_out = paho.time_func()
        written_qos0 = []
        for packet, mid, info, qos in packets:
            taken = min(sent, len(packet))
            sent -= taken
            if taken < len(packet):
                self._out_packet.append({
                    "command": _PUBLISH, "mid": mid, "qos": qos, "pos": taken,
                    "to_process": len(packet) - taken, "packet": packet, "info": info})
            elif not qos:
                written_qos0.append((mid, info))
        for mid, info in written_qos0:  # after the rest is queued: a callback may raise
            self._written_qos0(mid, info)
        return _OK

    def _written_qos0(self, mid: int, info: paho.MQTTMessageInfo) -> None:
        """What paho's `_packet_write` does once a QoS 0 PUBLISH is written whole."""
        self._call_on_publish(mid, _PUBACK_OK)
        info._set_as_published()

    def _call_on_publish(self, mid: int, reason: ReasonCode) -> None:
        """paho's `on_publish` call (callback API 2, no properties), with its handling of a
        callback that raises."""
        on_publish = cast("paho.CallbackOnPublish_v2 | None", self._on_publish)
        if on_publish is None:
            return
        with self._in_callback_mutex:
            try:
                on_publish(self, self._userdata, mid, reason, _PUBACK_PROPERTIES)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_publish: %s", err)
                if not self.suppress_exceptions:
                    raise

    # -- packets in ---------------------------------------------------------------------
    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Reads once and handles every complete packet read (`max_packets` is moot: a
        packet left in the buffer would wait for the socket to turn readable again)."""
        if not LEAN:
            return super().loop_read(max_packets)
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        try:
            data = self._sock_recv(READ_SIZE)
        except BlockingIOError:
            return _OK
        except TimeoutError as err:
            self._easy_log(paho.MQTT_LOG_ERR, "timeout on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        except OSError as err:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        buf = self._rbuf
        buf += data
        end, pos = len(buf), 0
        try:
            while end - pos >= 2:
                command = buf[pos]
                length, shift, i = 0, 0, pos + 1
                while True:  # the remaining length: 1 to 4 bytes
                    if i == end:
                        return _OK
                    byte = buf[i]
                    i += 1
                    length += (byte & 127) << shift
                    if not byte & 128:
                        break
                    shift += 7
                    if shift == 28:  # a fifth byte: not MQTT
                        return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
                if end - i < length:
                    return _OK
                pos = i + length
                reason = None
                if command & 0xF0 == _PUBACK:
                    if length == 2:
                        reason = _PUBACK_OK
                    elif self._v5 and (length == 3 or (length == 4 and not buf[i + 3])):
                        reason = _PUBACK_REASONS.get(buf[i + 2])  # no properties
                if reason is not None:
                    rc = self._puback((buf[i] << 8) | buf[i + 1], reason)
                else:
                    rc = self._handle(command, length, buf[i:pos])
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if self._sock is None:  # the packet ended the connection
                    return _OK
            return _OK
        finally:
            if self._rbuf is buf:  # not a reconnect meanwhile
                del buf[:pos]

    def _puback(self, mid: int, reason: ReasonCode) -> MQTTErrorCode:
        """paho's `_handle_pubackcomp` then `_do_on_publish` for a PUBACK without
        properties: the same callback, bookkeeping and order, without paho's generic
        dispatch (its callback lock, the callback API switch) and without
        `_update_inflight`'s walk over every message in flight when none is queued (when
        every message paho holds is counted in flight, there is nothing for it to send)."""
        with self._out_message_mutex:
            message = self._out_messages.get(mid)
            if message is None:
                return _OK
            if self._callback_api_version is not _API2:
                return self._do_on_publish(mid, reason, _PUBACK_PROPERTIES)
            self._call_on_publish(mid, reason)
            del self._out_messages[mid]
            message.info._set_as_published()
            if message.qos > 0:
                self._inflight_messages -= 1
                if (self._max_inflight_messages > 0
                        and len(self._out_messages) > self._inflight_messages):
                    return self._update_inflight()
            return _OK

    def _handle(self, command: int, length: int, body: bytearray) -> MQTTErrorCode:
        """A packet as paho's `_packet_read` hands it to `_packet_handle`."""
        self._in_packet = {
            "command": command, "have_remaining": 1, "remaining_count": [],
            "remaining_mult": 1, "remaining_length": length, "packet": body,
            "to_process": 0, "pos": 0,
        }
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0,
        }
        return rc
