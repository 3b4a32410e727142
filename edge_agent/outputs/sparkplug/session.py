"""The Sparkplug B edge node session: births, deaths, seq, bdSeq, aliases, commands, STATE.

The session is the format's `Output` (`edge_agent.outputs.base`). The outbox keeps
format-neutral telemetry (the JSON of `format: json`), because Sparkplug's seq belongs to an
MQTT session and `is_historical` depends on when a value is published, not when it was read.
The transport therefore asks this session to `encode` each outbox row as it hands it over;
the session turns it into a DDATA with the current seq and aliases. The readings of rows
stored by this process are kept until then (`_fresh`, bounded), so only rows from before a
restart or a reconnect's replay are parsed back from their JSON.

Everything here runs on the event loop thread: paho callbacks reach it through the transport.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import __version__, inbound, logs
from edge_agent.downlink import RETAINED_COMMAND, WriteRequest, WriteResult
from edge_agent.inbound import BadPayload, Rejected
from edge_agent.model import GOOD, now_ms
from edge_agent.outbox import Row
from edge_agent.outputs.base import (
    DeviceDirectory,
    DeviceView,
    FixedView,
    NodeFacts,
    ReadingDict,
)
from edge_agent.outputs.json import JsonTopics
from edge_agent.outputs.sparkplug import codec
from edge_agent.outputs.sparkplug import sparkplug_b_pb2 as pb
from edge_agent.outputs.sparkplug.codec import MetricDef, Reading
from edge_agent.store.statefile import StateFile
from edge_agent.transport.base import Link, Message

#: the request id DCMD writes are logged with (Sparkplug commands carry none)
DCMD_ID = "sparkplug-dcmd"

#: readings kept for rows not yet encoded (while live: they leave within milliseconds);
#: beyond this the oldest are parsed back from their JSON, like rows from before a restart
FRESH_ROWS = 1024


@dataclass
class _Device:
    """A device as known to the host in this session: born metrics and last sent values."""

    view: DeviceView
    metrics: dict[str, MetricDef] = field(default_factory=dict)
    born: bool = False
    alive: bool = False
    last_sent: dict[str, tuple[Any, str]] = field(default_factory=dict)
    #: points with a heartbeat: the core already decided to publish them, unchanged or not
    heartbeats: frozenset[str] = frozenset()
    #: read timestamp of each value the last DBIRTH carried: not worth sending again
    birth_ts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.heartbeats = frozenset(p.name for p in self.view.points.values() if p.heartbeat)


class BdSeqStore:
    """bdSeq survives restarts, so a host never pairs a new NDEATH with an old NBIRTH.

    Kept like the buffer's state (`edge_agent.store.statefile`): written atomically, kept in
    memory when the folder is read-only or full (`degraded` says why; publishing goes on),
    and a broken file is reported and moved aside, not silently taken for bdSeq 0.
    """

    def __init__(self, path: Path | None, log: Any = None) -> None:
        self.file = StateFile(path, "sparkplug bdSeq", log) if path is not None else None
        self.next = 0
        body = self.file.load() if self.file is not None else None
        if body is not None:
            value = body.get("next_bd_seq")
            if isinstance(value, int) and not isinstance(value, bool):
                self.next = value % 256
            elif self.file is not None:
                self.file.report_broken(f"next_bd_seq is {value!r}")

    @property
    def degraded(self) -> str | None:
        return self.file.degraded if self.file is not None else None

    def advance(self, used: int) -> None:
        self.next = (used + 1) % 256
        if self.file is not None:
            self.file.save({"next_bd_seq": self.next})


def state_path_for(buffer_path: Path | None) -> Path | None:
    """The bdSeq file lives next to the durable buffer (in memory when the buffer is)."""
    if buffer_path is None:
        return None
    return Path(buffer_path).with_name(Path(buffer_path).name + ".sparkplug.json")


class SparkplugSession:
    """One Sparkplug edge node with its devices, publishing through a `Link`.

    `telemetry_topics` names the format-neutral rows it stores (the JSON topics), so that a
    backlog still goes out if the agent restarts with `format: json`.
    """

    def __init__(self, *, link: Link, group: str, node: str, devices: DeviceDirectory,
                 telemetry_topics: JsonTopics | None = None,
                 primary_host: str | None = None, state_path: Path | None = None,
                 data_qos: int = 1, facts: NodeFacts | None = None,
                 claim_topic: str | None = None) -> None:
        self.link = link
        self.group, self.node = group, node
        self.primary_host = primary_host
        self.data_qos = data_qos
        self.log = logs.get("edge_agent.sparkplug", node=node, group=group)
        self.bd_store = BdSeqStore(state_path, self.log)
        self.bd_seq = self.bd_store.next
        self.rows = telemetry_topics or JsonTopics("spBv1.0", node)
        self._row_topics: dict[str, str] = {}
        self._fresh: dict[tuple[str, int], list[ReadingDict]] = {}
        self.live = False  # births published in this MQTT session: DDATA may flow
        self.births = 0
        self.historical_sent = 0
        self.commands_refused = 0
        self.unencodable = 0
        self._seq = 0
        self._live_since = 0  # readings taken before this (epoch ms) are historical
        self._host_ts = -1  # newest STATE timestamp seen; older ones are ignored
        self._next_alias = 1
        self._aliases: dict[str, int] = {}
        self.directory = devices
        self._devices: dict[str, _Device] = {}
        for name in (codec.BDSEQ, codec.REBIRTH, codec.VERSION):
            self._aliases[name] = self._alias()
        self.ndata_topic = codec.topic(group, "NDATA", node)
        self._ncmd = codec.topic(group, "NCMD", node)
        self._dcmd_prefix = codec.topic(group, "DCMD", node) + "/"
        self._state_topic = codec.state_topic(primary_host) if primary_host else None
        # Sparkplug has no retained node message to compare instance ids on (NBIRTH is not
        # retained, NDEATH is the will), so a retained claim outside spBv1.0 carries the
        # instance id for edge_agent.conflict: `<topic_prefix>/<node>/instance`
        self.facts = facts
        self._claim_topic = claim_topic if facts is not None else None

    @property
    def degraded(self) -> str | None:
        """Why the bdSeq is kept in memory only (its file cannot be written), or None."""
        return self.bd_store.degraded

    # -- the transport's side (Wire) -----------------------------------------------------
    def subscriptions(self) -> Sequence[str]:
        topics = [self._ncmd, self._dcmd_prefix + "+"]
        if self._state_topic:
            topics.append(self._state_topic)
        if self._claim_topic:
            topics.append(self._claim_topic)
        return topics

    def ready(self) -> bool:
        return self.live

    def will(self) -> Message:
        """The NDEATH for the next connection attempt, carrying the bdSeq its NBIRTH will."""
        self.live = False
        self.bd_seq = self.bd_store.next
        return Message(codec.topic(self.group, "NDEATH", self.node),
                       codec.node_death(now_ms(), self.bd_seq), qos=1)

    # -- devices, aliases and metric definitions -----------------------------------------
    def _device(self, view: DeviceView) -> _Device:
        """The session's record of a device, refreshed from the runtime's current view
        (a reload may have replaced the device's runner since)."""
        device = self._devices.get(view.name)
        if device is None or device.view is not view:
            old = device
            device = self._devices[view.name] = _Device(view)
            if old is not None:
                device.born, device.alive = old.born, old.alive
            for point in view.points.values():
                self._define(device, point.name, None)
        return device

    def _lookup(self, name: str) -> _Device | None:
        view = self.directory.view(name)
        if view is not None:
            return self._device(view)
        return self._devices.get(name)

    def _alias(self) -> int:
        alias = self._next_alias
        self._next_alias += 1
        return alias

    def _define(self, device: _Device, metric: str, sample: Any) -> MetricDef:
        """Defines a metric once per process: its alias stays stable across rebirths."""
        spec = device.view.points.get(metric)
        scaled = spec is not None and (spec.scale != 1 or spec.offset != 0)
        datatype = codec.datatype_for(device.view.point_types.get(metric), scaled, sample)
        key = f"{device.view.name}\x00{metric}"
        alias = self._aliases.get(key)
        if alias is None:
            alias = self._aliases[key] = self._alias()
        definition = MetricDef(metric, alias, datatype, spec.unit if spec else None)
        device.metrics[metric] = definition
        return definition

    @staticmethod
    def _undefined(device: _Device, metric: str) -> bool:
        """True until a metric has a datatype (a typeless point waits for its first value)."""
        known = device.metrics.get(metric)
        return known is None or known.datatype == pb.Unknown

    # -- seq -----------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    # -- births and deaths ---------------------------------------------------------------
    def on_connected(self) -> None:
        if self._claim_topic:
            self.link.publish_now(Message(self._claim_topic, self._claim(), qos=1, retain=True))
        self.bd_store.advance(self.bd_seq)  # this bdSeq is spent, whatever happens next
        self.live = False
        for device in self._devices.values():
            device.born = device.alive = False
        if self.primary_host is None:
            self.birth()
        else:
            self.log.info("sparkplug_waiting_for_primary_host", host=self.primary_host)

    def birth(self) -> None:
        """NBIRTH (seq 0) then a DBIRTH per connected device, before any DDATA."""
        ts = now_ms()
        self._seq = 0
        self._live_since = ts
        self.link.publish_now(Message(codec.topic(self.group, "NBIRTH", self.node),
                                      codec.node_birth(ts, self.bd_seq, __version__,
                                                       self._aliases), qos=0))
        for device in self._devices.values():
            device.born = device.alive = False
        for view in self.directory.views():
            if view.status == "connected":
                self._device_birth(self._device(view), ts)
        self.live = True
        self.births += 1
        self.log.info("sparkplug_birth", bd_seq=self.bd_seq,
                      devices=sum(d.born for d in self._devices.values()))

    def _device_birth(self, device: _Device, ts: int) -> None:
        last = device.view.last_values
        for metric, reading in last.items():
            if self._undefined(device, metric):
                self._define(device, metric, reading.get("value"))
        metrics: list[tuple[MetricDef, Reading | None]] = []
        device.last_sent, device.birth_ts = {}, {}
        for name, spec in device.metrics.items():
            known = last.get(name)
            if known is None:
                metrics.append((spec, None))
                continue
            reading = known
            quality = reading.get("quality", GOOD)
            metrics.append((spec, Reading(reading.get("value"), reading.get("ts", ts), quality)))
            device.last_sent[name] = (reading.get("value"), quality)
            device.birth_ts[name] = reading.get("ts", ts)
        self.link.publish_now(Message(
            codec.topic(self.group, "DBIRTH", self.node, device.view.name),
            codec.device_birth(ts, self._next_seq(), metrics), qos=0))
        device.born = device.alive = True

    def device_status(self, device: DeviceView) -> None:
        self._status(device.name, device.status)

    def device_stopped(self, name: str, removed: bool) -> None:
        """DDEATH whether removed or restarting: the host must not keep it alive."""
        self._status(name, "removed")

    def _status(self, name: str, state: str) -> None:
        """DDEATH when a born device drops out, a fresh DBIRTH when it comes back."""
        if not self.live:
            return
        device = self._lookup(name)
        if device is None:
            return
        if state == "connected":
            if not device.alive:
                self._device_birth(device, now_ms())
        elif device.alive:
            device.alive = False
            self.link.publish_now(Message(codec.topic(self.group, "DDEATH", self.node, name),
                                          codec.device_death(now_ms(), self._next_seq()),
                                          qos=0))

    def rebirth(self) -> None:
        if self.live:
            self.birth()

    def node_changed(self) -> None:
        """Devices added or removed already have their DBIRTH / DDEATH; announcing anything
        else would take an NBIRTH, which restarts seq for every device: not done. The claim
        (instance, config hash, conflict) is outside Sparkplug and is refreshed."""
        if self._claim_topic and self.link.is_connected():
            self.link.publish_now(Message(self._claim_topic, self._claim(), qos=1, retain=True))

    def _claim(self) -> bytes:
        fields = self.facts.status_fields() if self.facts is not None else {}
        return json.dumps({"node": self.node, **fields, "ts": now_ms()},
                          separators=(",", ":")).encode()

    # -- telemetry -----------------------------------------------------------------------
    def telemetry(self, device: str, seq: int, readings: list[ReadingDict]) -> tuple[str, bytes]:
        """The format-neutral row to store; its readings are kept for `encode` (no parse)."""
        if self.live:  # otherwise the row waits for a connection: not worth the memory
            fresh = self._fresh
            if len(fresh) >= FRESH_ROWS:  # a backlog, or rows a full buffer dropped
                del fresh[next(iter(fresh))]
            fresh[device, seq] = readings
        topic = self._row_topics.get(device)
        if topic is None:
            topic = self._row_topics[device] = self.rows.telemetry(device)
        return topic, self.rows.telemetry_payload(device, seq, readings)

    def encode(self, row: Row) -> Message | None:
        """The DDATA for one outbox row, or None when nothing changed (report by exception).

        Values read before this session's births are historical: the host never saw them live.
        A row that cannot be encoded is logged, counted and dropped, never retried forever.
        """
        try:
            return self._encode(row)
        except Exception as exc:
            self.unencodable += 1
            self.log.error("sparkplug_row_unencodable", device=row.device, id=row.id,
                           error=repr(exc))
            return None

    def _encode(self, row: Row) -> Message | None:
        readings = self._fresh.pop((row.device, row.seq), None)
        if readings is None:  # stored before a restart, or replayed after a reconnect
            try:
                readings = json.loads(row.payload)["readings"]
            except (ValueError, KeyError, TypeError):
                self.log.error("sparkplug_unreadable_row", device=row.device, id=row.id)
                return None
        device = self._devices.get(row.device) or self._lookup(row.device)
        if device is None:  # no longer configured, but its buffered data still goes out
            device = self._device(FixedView(row.device))
        new = [r for r in readings if self._undefined(device, r["metric"])]
        for reading in new:
            self._define(device, reading["metric"], reading.get("value"))
        if new or not device.born:
            self._device_birth(device, now_ms())  # the host must know an alias before its use
        live_since = self._live_since
        metrics: list[tuple[MetricDef, Reading]] = []
        flags: list[bool] = []
        last_sent = device.last_sent
        for reading in readings:
            name, value = reading["metric"], reading.get("value")
            quality = reading.get("quality", GOOD)
            historical = reading["ts"] < live_since
            if historical and device.birth_ts.get(name) == reading["ts"]:
                continue  # the DBIRTH already carried this very reading
            if not historical and name not in device.heartbeats:
                if last_sent.get(name) == (value, quality):
                    continue
                last_sent[name] = (value, quality)
            metrics.append((device.metrics[name], Reading(value, reading["ts"], quality)))
            flags.append(historical)
        if not metrics:
            return None
        if flags[0]:
            self.historical_sent += 1
        payload = codec.device_data(now_ms(), self._next_seq(), metrics, flags)
        return Message(codec.topic(self.group, "DDATA", self.node, row.device), payload,
                       self.data_qos)

    # -- commands and host state ---------------------------------------------------------
    def command(self, topic: str, payload: bytes,
                retained: bool) -> WriteRequest | Rejected | None:
        """DCMD writes become a request; STATE and NCMD (Rebirth) are handled here.

        Every payload is read within `edge_agent.inbound`'s limits; a bad one is returned as
        `Rejected` (or, for a DCMD, as a request with its problem) for the downlink to count
        and log. An empty payload only clears a retained message: nothing to do.
        """
        if not payload:
            return None
        if topic == self._state_topic:  # retained by design: the flag is not looked at
            return self._on_state(payload)
        if topic == self._claim_topic and self.facts is not None:
            self.facts.status_seen(payload, retained)
            return None
        if topic == self._ncmd:
            if retained:
                return Rejected("retained", RETAINED_COMMAND, {"topic": topic})
            return self._on_ncmd(payload)
        if topic.startswith(self._dcmd_prefix):
            return self._on_dcmd(topic[len(self._dcmd_prefix):], payload, retained)
        return None

    def _on_state(self, data: bytes) -> Rejected | None:
        """Sparkplug 3.0 STATE: JSON {"online": bool, "timestamp": ms}; stale ones ignored."""
        try:
            online, ts = inbound.parse_state(data)
        except BadPayload as exc:
            return Rejected(exc.reason, exc.message, {"topic": self._state_topic})
        if ts < self._host_ts:
            self.log.info("sparkplug_stale_state_ignored", online=online, timestamp=ts)
            return None
        self._host_ts = ts
        if online and not self.live and self.link.is_connected():
            self.log.info("sparkplug_primary_host_online", host=self.primary_host)
            self.birth()
            self.link.pump()
        elif not online and self.live:
            # the host cannot see us: end the session with a death certificate and start over,
            # so the births are published again once it is back
            self.log.warning("sparkplug_primary_host_offline", host=self.primary_host)
            self.live = False
            self.link.publish_now(self.will_now())
            self.link.disconnect()
        return None

    def will_now(self) -> Message:
        """This connection's NDEATH, for an intentional disconnect."""
        return Message(codec.topic(self.group, "NDEATH", self.node),
                       codec.node_death(now_ms(), self.bd_seq), qos=1)

    def _on_ncmd(self, data: bytes) -> Rejected | None:
        try:
            payload = codec.parse(data)
        except ValueError as exc:
            return Rejected(_parse_reason(data), str(exc), {"topic": self._ncmd})
        rebirth_alias = self._aliases[codec.REBIRTH]
        for metric in payload.metrics:
            named = metric.name == codec.REBIRTH or (
                not metric.name and metric.HasField("alias") and metric.alias == rebirth_alias)
            if not named:
                continue
            if metric.WhichOneof("value") != "boolean_value" or (
                    metric.HasField("datatype") and metric.datatype != pb.Boolean):
                return Rejected("datatype", f"{codec.REBIRTH} takes a Boolean",
                                {"topic": self._ncmd})
            if metric.boolean_value:
                self.log.info("sparkplug_rebirth_requested")
                self.rebirth()
                self.link.pump()
                return None
        self.log.info("sparkplug_ncmd_ignored",
                      metrics=[inbound.shown(m.name or m.alias) for m in payload.metrics[:8]])
        return None

    def _on_dcmd(self, device_name: str, data: bytes, retained: bool) -> WriteRequest | None:
        """A DCMD as one request, validated whole: any metric that is unknown, set twice, of
        another datatype or without a value makes the request refused, and nothing of it is
        written (so a DCMD asks at most one write per point of the device)."""
        writes: list[tuple[str, Any]] = []
        try:
            if retained:
                raise BadPayload("retained", RETAINED_COMMAND)
            try:
                payload = codec.parse(data)
            except ValueError as exc:
                raise BadPayload(_parse_reason(data), str(exc)) from None
            if not payload.metrics:
                return None  # asks nothing (an empty payload parses as one): nothing to do
            device = self._lookup(device_name)
            if device is None:
                raise BadPayload("unknown_device", f"no device '{device_name}' on this node")
            by_alias = {m.alias: m for m in device.metrics.values()}
            for metric in payload.metrics:
                spec = (device.metrics.get(metric.name) if metric.name
                        else by_alias.get(metric.alias))
                label = inbound.shown(metric.name or metric.alias)
                if spec is None:
                    writes.append((metric.name or str(metric.alias), None))
                    raise BadPayload("invalid", f"device '{device_name}' has no metric {label}")
                if any(name == spec.name for name, _ in writes):
                    writes.append((spec.name, None))
                    raise BadPayload("invalid", f"metric {label} is set twice in one DCMD")
                try:
                    writes.append((spec.name, codec.command_value(metric, spec.datatype)))
                except ValueError as exc:
                    writes.append((spec.name, None))
                    raise BadPayload("datatype", f"metric {label}: {exc}") from None
        except BadPayload as exc:
            return WriteRequest(device_name, tuple(writes), DCMD_ID, problem=exc.message,
                                reason=exc.reason)
        return WriteRequest(device_name, tuple(writes), DCMD_ID)

    def answer(self, request: WriteRequest, results: Sequence[WriteResult]) -> None:
        """DCMD has no reply topic: each write's outcome is logged and counted (a request
        refused unread is already logged, once, by the downlink)."""
        if request.problem is not None:
            self.commands_refused += 1
            return
        metrics: list[str | None] = [metric for metric, _ in request.writes] or [None]
        for metric, result in zip(metrics, results, strict=False):
            if result.ok:
                self.log.info("sparkplug_dcmd_written", device=request.device, metric=metric)
            else:
                self.commands_refused += 1
                self.log.warning("sparkplug_dcmd_failed", device=request.device, metric=metric,
                                 error=result.error or "write failed")

    # -- shutdown ------------------------------------------------------------------------
    def shutdown(self) -> Message:
        """An intentional disconnect publishes its NDEATH first (the broker then drops the will)."""
        self.live = False
        return self.will_now()


def _parse_reason(data: bytes) -> str:
    return "too_large" if len(data) > inbound.MAX_PAYLOAD_BYTES else "malformed"
