"""LeanClient (edge_agent.transport.lean_paho) against paho itself and a real Mosquitto.

The short roads use paho internals, so these tests are the alarm for a paho upgrade: the
release check fails first, and the differential tests compare, byte for byte and callback
for callback, what the short roads do with what paho's own code does with the same input.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.transport import lean_paho
from edge_agent.transport.lean_paho import LeanClient
from edge_agent_simulators.broker import Mosquitto

PROTOCOLS = [paho.MQTTv311, paho.MQTTv5]
#: sizes around the remaining length's 1-, 2- and 3-byte forms
PAYLOADS = [b"", b"x", b"a" * 120, b"b" * 124, b"c" * 200, b"d" * 16380, b"e" * 20000]


def _client(cls: type[paho.Client], protocol: int, client_id: str = "lean-test") -> Any:
    if protocol == paho.MQTTv5:
        return cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    return cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
               clean_session=True)


def test_paho_is_the_release_the_short_roads_were_checked_against() -> None:
    """A paho upgrade must come with a fresh reading of its internals (and of this file):
    until then the agent would quietly run on plain paho."""
    from paho.mqtt import __version__
    assert __version__ == lean_paho.KNOWN_PAHO, (
        f"paho-mqtt {__version__}: re-read its Client internals against "
        f"edge_agent/transport/lean_paho.py, then update KNOWN_PAHO")
    assert lean_paho.LEAN
    client = _client(paho.Client, paho.MQTTv311)
    for name in ("_packet_handle", "_do_on_publish", "_packet_queue", "_loop_rc_handle",
                 "_mid_generate", "_sock_recv", "_easy_log", "_out_messages",
                 "_out_message_mutex", "_msgtime_mutex", "_in_packet", "_inflight_messages",
                 "_max_inflight_messages", "_max_queued_messages", "_sock", "_protocol",
                 "_in_callback_mutex", "_callback_api_version",
                 "_userdata", "_on_publish", "suppress_exceptions"):
        assert hasattr(client, name), name


class _Wired:
    """A client whose socket is one end of a socketpair: what it writes and what it is given
    to read are both in the test's hands."""

    def __init__(self, cls: type[paho.Client], protocol: int) -> None:
        self.client = _client(cls, protocol)
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.client._sock = self.ours
        self.published: list[tuple[int, int, str]] = []
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self.published.append((mid, reason.value, str(properties)))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.messages.append((message.topic, message.payload, message.qos,
                              bool(message.retain)))

    def written(self) -> bytes:
        self.peer.setblocking(False)
        out = b""
        while True:
            try:
                out += self.peer.recv(65536)
            except BlockingIOError:
                return out

    def written_to_the_end(self) -> bytes:
        """What the client writes until paho's queue is empty (loop_write after each read)."""
        written = b""
        while self.client.want_write():
            written += self.written()
            assert self.client.loop_write() == 0
        return written + self.written()

    def feed(self, data: bytes) -> list[MQTTErrorCode]:
        """Gives the client `data` to read and lets it read until nothing is left."""
        self.peer.sendall(data)
        codes = []
        while self.client._sock is not None and select.select([self.ours], [], [], 0)[0]:
            codes.append(self.client.loop_read())
        return codes

    def close(self) -> None:
        self.ours.close()
        self.peer.close()


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[_Wired, _Wired]]:
    protocol = request.param
    wired = (_Wired(paho.Client, protocol), _Wired(LeanClient, protocol))
    yield wired
    for one in wired:
        one.close()


def _each_size_published(pair: tuple[_Wired, _Wired], qos: int) -> Iterator[list[Any]]:
    """Publishes every size of PAYLOADS, retained and not, on both clients; checks both
    wrote the same bytes and yields the two message infos."""
    for retain in (False, True):
        for payload in PAYLOADS:
            infos = [one.client.publish("site/dev-1/telemetry", payload, qos, retain)
                     for one in pair]
            assert pair[0].written() == pair[1].written()
            yield infos


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_a_qos1_publish_is_the_packet_paho_sends(pair: tuple[_Wired, _Wired]) -> None:
    plain, lean = pair
    for infos in _each_size_published(pair, 1):
        assert [(i.mid, i.rc) for i in infos] == [(infos[0].mid, 0)] * 2
        message = lean.client._out_messages[infos[1].mid]
        twin = plain.client._out_messages[infos[0].mid]
        assert (message.topic, message.payload, message.qos, message.retain,
                message.state) == (twin.topic, twin.payload, twin.qos, twin.retain,
                                   twin.state)
    assert lean.client._inflight_messages == plain.client._inflight_messages


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_what_the_socket_does_not_take_at_once_loop_write_finishes(
        pair: tuple[_Wired, _Wired]) -> None:
    out = []
    for one in pair:
        one.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        one.client.publish("big/one", b"z" * 300_000, 1)
        assert one.client.want_write()  # the rest waits in paho's queue
        one.client.publish("small/one", b"s", 1)  # behind it, in order
        out.append(one.written_to_the_end())
    assert out[0] == out[1]
    assert len(out[1]) > 300_000


class _CountingSocket:
    """The client's socket end, counting the writes (one `send` per write)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sends = sock, 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_corked_publishes_leave_in_one_write_as_the_bytes_paho_sends(
        pair: tuple[_Wired, _Wired]) -> None:
    """A flush's PUBLISHes: paho writes each at once, LeanClient held them for one send;
    the bytes, their order and the messages' state are the same."""
    plain, lean = pair
    counting = _CountingSocket(lean.ours)
    lean.client._sock = counting
    lean.client.cork()
    for n in range(5):
        for one in pair:
            one.client.publish(f"site/dev-{n}/telemetry", b"x" * (100 + n), 1)
    assert lean.written() == b"" and counting.sends == 0  # held
    assert lean.client.uncork() == 0
    assert counting.sends == 1
    assert plain.written() == lean.written() != b""
    assert lean.client._inflight_messages == plain.client._inflight_messages == 5
    lean.client.cork()
    assert lean.client.uncork() == 0 and counting.sends == 1  # nothing held: no write


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_a_publish_on_paho_s_road_while_corked_goes_after_what_is_held(
        pair: tuple[_Wired, _Wired]) -> None:
    plain, lean = pair
    lean.client.cork()
    for one in pair:
        one.client.publish("a/1", b"1", 1)
        one.client.publish("a/2", b"2", 2)  # QoS 2: paho's road, written at once
        one.client.publish("a/3", b"3", 1)
    lean.client.uncork()
    assert plain.written() == lean.written()


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_a_qos0_publish_is_the_packet_paho_sends_and_is_published_once_written(
        pair: tuple[_Wired, _Wired]) -> None:
    plain, lean = pair
    for infos in _each_size_published(pair, 0):
        assert [(i.mid, i.rc, i.is_published()) for i in infos] == [
            (infos[0].mid, 0, True)] * 2
    assert lean.published == plain.published
    assert len(lean.published) == 2 * len(PAYLOADS)
    assert not lean.client._out_messages and lean.client._inflight_messages == 0


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_corked_qos0_and_qos1_leave_in_one_write_and_qos0_is_published_then(
        pair: tuple[_Wired, _Wired]) -> None:
    """Sparkplug's births (QoS 0) and data (QoS 1) of one flush: one send, paho's bytes,
    and each QoS 0 message reported published only once the socket has taken it."""
    plain, lean = pair
    counting = _CountingSocket(lean.ours)
    lean.client._sock = counting
    lean.client.cork()
    infos = []
    for n in range(6):
        for one in pair:
            infos.append(one.client.publish(f"spBv1.0/g/DDATA/n/d{n}", b"m" * (50 + n), n % 2))
    assert lean.published == [] and counting.sends == 0  # held: not written, not published
    assert not any(info.is_published() for info in infos[1::2])
    assert lean.client.uncork() == 0
    assert counting.sends == 1
    assert plain.written() == lean.written() != b""
    assert lean.published == plain.published
    assert [mid for mid, _, _ in lean.published] == [1, 3, 5]  # the QoS 0 ones
    assert lean.client._inflight_messages == plain.client._inflight_messages == 3


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_a_qos0_packet_the_socket_takes_in_part_is_published_when_paho_has_written_it(
        pair: tuple[_Wired, _Wired]) -> None:
    plain, lean = pair
    out = []
    lean.client.cork()
    for one in pair:
        one.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for n in range(4):
            one.client.publish(f"big/{n}", bytes([65 + n]) * 100_000, 0)
    lean.client.uncork()
    for one in pair:
        assert one.client.want_write()  # the rest waits in paho's queue
        assert len(one.published) < 4  # not reported before it is written whole
        out.append(one.written_to_the_end())
    assert out[0] == out[1]
    assert len(out[1]) > 400_000
    assert lean.published == plain.published
    assert [mid for mid, _, _ in lean.published] == [1, 2, 3, 4]


def _raise(*args: Any) -> None:
    raise RuntimeError("callback")


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_an_on_publish_that_raises_leaves_the_rest_of_a_corked_write_queued(
        pair: tuple[_Wired, _Wired]) -> None:
    """The first QoS 0 packet goes whole, the next ones only in part; the report of the
    first raises (suppress_exceptions off), and what the socket did not take still leaves."""
    plain, lean = pair
    out = []
    lean.client.cork()
    for one in pair:
        one.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        one.client.suppress_exceptions = False
        one.client.on_publish = _raise
    with pytest.raises(RuntimeError):
        plain.client.publish("small/0", b"s", 0)
    with pytest.raises(RuntimeError):
        lean.client.publish("small/0", b"s", 0)
        for n in range(3):
            lean.client.publish(f"big/{n}", bytes([65 + n]) * 100_000, 0)
        lean.client.uncork()
    for one in pair:
        one.client.on_publish = None
    for n in range(3):
        plain.client.publish(f"big/{n}", bytes([65 + n]) * 100_000, 0)
    for one in pair:
        assert one.client.want_write()  # the rest waits in paho's queue
        out.append(one.written_to_the_end())
    assert out[0] == out[1]
    assert len(out[1]) > 300_000


@pytest.mark.filterwarnings("ignore:Callback API version 1 is deprecated")
def test_a_qos0_publish_with_callback_api_1_is_reported_by_paho_s_writer() -> None:
    """The short road reports QoS 0 the version 2 way only; version 1 keeps paho's road."""
    client = LeanClient(CallbackAPIVersion.VERSION1, client_id="v1")
    ours, peer = socket.socketpair()
    try:
        client._sock = ours
        reported: list[tuple[Any, ...]] = []
        client.on_publish = lambda *args: reported.append(args[2:])
        info = client.publish("a/b", b"x", 0)
        assert peer.recv(100) == b"\x30\x06\x00\x03a/bx"
        assert reported == [(info.mid,)] and info.is_published()
    finally:
        ours.close()
        peer.close()


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_a_qos0_publish_not_connected_is_paho_s(pair: tuple[_Wired, _Wired]) -> None:
    for one in pair:
        one.client._sock = None
    infos = [one.client.publish("a/b", b"3", 0) for one in pair]
    assert infos[0].rc == infos[1].rc == MQTTErrorCode.MQTT_ERR_NO_CONN
    assert pair[0].published == pair[1].published == []


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_what_the_socket_does_not_take_of_a_corked_write_loop_write_finishes(
        pair: tuple[_Wired, _Wired]) -> None:
    out = []
    pair[1].client.cork()
    for one in pair:
        one.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for n in range(4):
            one.client.publish(f"big/{n}", bytes([65 + n]) * 100_000, 1)
    pair[1].client.uncork()
    for one in pair:
        assert one.client.want_write()  # the rest waits in paho's queue, packet by packet
        out.append(one.written_to_the_end())
    assert out[0] == out[1]
    assert len(out[1]) > 400_000


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_a_puback_sends_what_paho_queued_behind_a_full_window(
        pair: tuple[_Wired, _Wired]) -> None:
    """The PUBACK's short road skips paho's walk over the messages in flight only when none
    is queued: with a full window the next message goes out on the acknowledgement."""
    plain, lean = pair
    for one in pair:
        one.client.max_inflight_messages_set(1)
        one.client.publish("w/1", b"1", 1)
        one.client.publish("w/2", b"2", 1)  # the window is full: paho queues it
    assert plain.written() == lean.written()
    for one in pair:
        one.feed(_puback(1))
    assert plain.written() == lean.written() != b""  # w/2, sent on the PUBACK
    assert plain.published == lean.published == [(1, 0, "[]")]
    assert lean.client._inflight_messages == plain.client._inflight_messages == 1
    assert list(lean.client._out_messages) == list(plain.client._out_messages) == [2]


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_a_publish_from_a_callback_is_queued_as_paho_queues_it(
        pair: tuple[_Wired, _Wired]) -> None:
    plain, lean = pair
    for one in pair:
        client = one.client
        client.publish("a/1", b"1", 1)
        one.written()
        client.on_publish = lambda c, *args: c.publish("a/2", b"2", 1)
        one.feed(_puback(1))
        assert client.want_write()  # queued inside the callback, not written
    assert plain.written() == lean.written() == b""
    for one in pair:
        one.client.loop_write()
    assert plain.written() == lean.written() != b""


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_what_the_short_road_leaves_to_paho_is_paho_s(pair: tuple[_Wired, _Wired]) -> None:
    """Full window, queue limit, not connected, QoS 2, text payloads, bad topics: paho."""
    plain, lean = pair
    for one in pair:
        one.client.max_inflight_messages_set(1)
    calls = [(("a/b", b"1", 1, False), {}), (("a/b", b"2", 1, False), {}),  # 2nd queued
             (("a/b", "text", 0, False), {}), (("a/b", b"2", 2, True), {})]
    for args, kwargs in calls:
        infos = [one.client.publish(*args, **kwargs) for one in pair]
        assert infos[0].mid == infos[1].mid and infos[0].rc == infos[1].rc
        assert plain.written() == lean.written()
    for topic in ("a/+", "a/#", ""):
        outcomes = []
        for one in pair:
            try:
                one.client.publish(topic, b"x", 1)
                outcomes.append("sent")
            except ValueError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]
    for one in pair:
        one.client.max_inflight_messages_set(0)
        one.client._sock = None
    infos = [one.client.publish("a/b", b"3", 1) for one in pair]
    assert infos[0].rc == infos[1].rc == MQTTErrorCode.MQTT_ERR_NO_CONN


def _puback(mid: int, tail: bytes = b"") -> bytes:
    return bytes((0x40, 2 + len(tail))) + mid.to_bytes(2, "big") + tail


def _incoming(topic: bytes, payload: bytes, v5: bool) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (b"\x00" if v5 else b"") + payload
    return bytes((0x30, len(body))) + body


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_packets_read_reach_the_callbacks_as_paho_s_reader_hands_them(
        pair: tuple[_Wired, _Wired]) -> None:
    plain, lean = pair
    v5 = plain.client._protocol == paho.MQTTv5
    for one in pair:
        for n in range(6):
            one.client.publish(f"a/{n}", b"p", 1)
        one.written()
    stream = (_puback(1) + _puback(99) + b"\xd0\x00"  # unknown mid, PINGRESP
              + _incoming(b"cmd/x", b"go", v5) + _puback(2))
    if v5:
        stream += (_puback(3, b"\x10")  # No matching subscribers
                   + _puback(4, b"\x00\x00")  # success, empty properties
                   + _puback(5, b"\x87\x05\x1f\x00\x02no")  # refused, with a reason string
                   + _puback(6, b"\x87"))
    else:
        stream += _puback(3) + _puback(4) + _puback(5) + _puback(6)
    # all at once, then byte by byte (partial packets wait for the rest)
    codes = [one.feed(stream) for one in pair]
    assert all(rc == 0 for rc in codes[0] + codes[1])
    assert lean.published == plain.published
    assert [mid for mid, _, _ in lean.published] == [1, 2, 3, 4, 5, 6]
    assert lean.messages == plain.messages == [("cmd/x", b"go", 0, False)]
    assert not lean.client._out_messages and lean.client._inflight_messages == 0
    for one in pair:
        one.client.publish("a/7", b"p", 1)
        one.written()
        one.published.clear()
        for byte in _puback(7) + b"\xd0\x00":
            assert all(rc == 0 for rc in one.feed(bytes((byte,))))
    assert lean.published == plain.published == [(7, 0, plain.published[0][2])]


@pytest.mark.parametrize("pair", PROTOCOLS, indirect=True)
def test_a_malformed_packet_ends_the_connection_as_paho_does(
        pair: tuple[_Wired, _Wired]) -> None:
    plain, lean = pair
    for one in pair:
        one.client.publish("a/b", b"p", 1)
        one.written()
    # 3.1.1: a PUBACK is two bytes; 5: a reason code that is not a PUBACK's
    bad = _puback(1, b"\x00") if plain.client._protocol == paho.MQTTv311 else _puback(1, b"\x05")
    codes = [one.feed(bad) for one in pair]
    assert codes[0][-1] == codes[1][-1] != 0
    assert plain.client._sock is None and lean.client._sock is None
    assert plain.published == lean.published == []


def test_a_puback_too_short_ends_the_connection_as_paho_does() -> None:
    pair = _Wired(paho.Client, paho.MQTTv5), _Wired(LeanClient, paho.MQTTv5)
    try:
        codes = [one.feed(b"\x40\x01\x00") for one in pair]
        assert codes[0][-1] == codes[1][-1] == MQTTErrorCode.MQTT_ERR_PROTOCOL
    finally:
        for one in pair:
            one.close()


def test_five_remaining_length_bytes_are_not_mqtt() -> None:
    lean = _Wired(LeanClient, paho.MQTTv311)
    try:
        assert lean.feed(b"\x30\xff\xff\xff\xff\x01") == [MQTTErrorCode.MQTT_ERR_PROTOCOL]
        assert lean.client._sock is None
    finally:
        lean.close()


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_short_roads_against_mosquitto(mosquitto: Mosquitto, protocol: int, qos: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every publish takes the short road out (and at QoS 1 its PUBACK the short road in),
    and a subscriber gets exactly what was published."""
    handled: list[int] = []
    slow_publishes: list[str] = []
    original_handle, original_publish = paho.Client._packet_handle, paho.Client.publish

    def packet_handle(self: paho.Client) -> MQTTErrorCode:
        handled.append(self._in_packet["command"] & 0xF0)
        return original_handle(self)

    def publish(self: paho.Client, topic: str, *args: Any, **kwargs: Any) -> Any:
        slow_publishes.append(topic)
        return original_publish(self, topic, *args, **kwargs)

    received: list[tuple[str, bytes, bool]] = []
    got_all = threading.Event()
    expected = [(f"lean/{n}", payload, retain) for n, payload in enumerate(PAYLOADS)
                for retain in (False, True)]
    sub = _client(paho.Client, protocol, "lean-sub")

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        received.append((message.topic, message.payload, bool(message.retain)))
        if len(received) == len(expected):
            got_all.set()

    sub.on_message = on_message
    sub.on_connect = lambda client, *args: client.subscribe("lean/#", qos=1)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        monkeypatch.setattr(paho.Client, "_packet_handle", packet_handle)
        monkeypatch.setattr(paho.Client, "publish", publish)
        lean = _client(LeanClient, protocol, "lean-pub")
        acked: list[tuple[int, bool]] = []
        lean.on_publish = lambda client, u, mid, reason, props: acked.append(
            (mid, reason.is_failure))
        lean.connect("127.0.0.1", mosquitto.port)
        while not lean.is_connected():
            select.select([lean.socket()], [], [], 1)
            assert lean.loop_read() == 0
        mids = [lean.publish(topic, payload, qos, retain).mid
                for topic, payload, retain in expected]
        while len(acked) < len(mids):
            while lean.want_write():
                lean.loop_write()
            select.select([lean.socket()], [], [], 1)
            assert lean.loop_read() == 0
        assert sorted(acked) == [(mid, False) for mid in mids]
        assert slow_publishes == []
        assert paho.PUBACK not in handled and paho.CONNACK in handled
        assert got_all.wait(10)
        assert sorted(received) == sorted(
            (t, p, False) for t, p, _ in expected)  # live delivery clears the retain flag
        lean.disconnect()
    finally:
        sub.loop_stop()
        sub.disconnect()
