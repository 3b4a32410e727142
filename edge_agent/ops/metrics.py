"""Prometheus metrics of one agent, in a registry of its own.

The hot path does not touch prometheus objects per reading: counters the agent keeps anyway
(readings, polls, errors by kind, buffer depth...) are read at scrape time by a custom
collector from a snapshot taken on the event loop (see `edge_agent.ops.snapshot`). Only the two
histograms are observed as things happen, once per poll and once per flushed batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edge_agent.inbound import REASONS

DEVICE_STATES = ("connected", "disconnected", "error")
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 3600.0)


class AgentMetrics:
    """The registry, the histograms, and the collector reading everything else."""

    def __init__(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        self.registry = CollectorRegistry()
        self.poll_duration = Histogram(
            "edge_agent_poll_duration_seconds", "Time one poll of a device took, errors included",
            ["device"], buckets=POLL_BUCKETS, registry=self.registry)
        self.publish_latency = Histogram(
            "edge_agent_publish_latency_seconds",
            "From a reading's read timestamp to the broker's acknowledgement (sampled: the "
            "first message of each flushed batch)", buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.registry.register(_SnapshotCollector(snapshot))

    def forget_device(self, name: str) -> None:
        """Drops a removed device's histogram series, so /metrics shows only live devices."""
        with contextlib.suppress(KeyError):
            self.poll_duration.remove(name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:  # the loop did not answer: expose the histograms only
            return
        info = InfoMetricFamily("edge_agent", "The agent's version and node name")
        info.add_metric([], {"version": snap["version"], "node": snap["node"]})
        yield info

        yield _gauge("edge_agent_broker_connected", "1 while connected to the MQTT broker",
                     snap["broker"]["connected"])
        yield _gauge("edge_agent_node_conflict", "1 while another agent uses this node name "
                     "(they take each other's MQTT session over; see docs/deploy.md)",
                     bool(snap.get("identity", {}).get("conflict")))
        yield _counter("edge_agent_messages_published", "Messages the broker acknowledged",
                       snap["published"])
        buffer = snap["buffer"]
        yield _gauge("edge_agent_buffer_messages", "Messages waiting in the buffer",
                     buffer["depth"])
        yield _gauge("edge_agent_buffer_bytes", "Bytes of payload waiting in the buffer",
                     buffer["bytes"])
        yield _counter("edge_agent_buffer_dropped", "Messages dropped because the buffer was "
                       "full (buffer.max_bytes)", buffer["dropped"])
        yield _gauge("edge_agent_buffer_degraded", "1 while the buffer cannot write to disk",
                     bool(buffer["degraded"]))
        yield _counter("edge_agent_buffer_quarantined", "Buffered messages set aside unsent "
                       "because they failed their checksum or could not be decoded or encoded",
                       buffer["quarantined"])
        yield _counter("edge_agent_buffer_lost", "Buffered messages lost to a damaged buffer "
                       "file (unreadable pages)", buffer["lost"])
        yield _counter("edge_agent_buffer_seq_skipped", "Telemetry seq numbers skipped at start "
                       "because the buffer's own were lost (at most the gap a subscriber sees)",
                       buffer["seq_skipped"])
        yield _counter("edge_agent_buffer_recoveries", "Buffer files rebuilt while running "
                       "(deleted, replaced or damaged)", buffer["recoveries"])
        yield _counter("edge_agent_buffer_checkpoint_failures",
                       "WAL syncs and checkpoints that failed", buffer["checkpoint_failures"])
        yield _gauge("edge_agent_buffer_wal_bytes", "Size of the buffer's write-ahead log",
                     buffer["wal_bytes"])
        yield _gauge("edge_agent_state_degraded", "1 while a state file (seq reservations, "
                     "Sparkplug bdSeq) cannot be written and is kept in memory",
                     bool(buffer["state_degraded"]))
        yield _gauge("edge_agent_publish_stalled_seconds", "Seconds messages have waited while "
                     "connected with none acknowledged (0 while the buffer moves)",
                     buffer["stalled_for"])

        reload = snap["reload"]
        yield _counter("edge_agent_config_reloads", "Configuration reloads attempted",
                       reload["attempts"])
        yield _counter("edge_agent_config_reload_failures",
                       "Configuration reloads refused (invalid config; the running one stays)",
                       reload["failures"])
        yield _gauge("edge_agent_config_last_reload_success",
                     "1 if the last reload was applied (or none was tried), 0 if refused",
                     reload["last_ok"])

        rejected = CounterMetricFamily(
            "edge_agent_downlink_rejected",
            "Downlink messages refused before reaching a device, by reason", labels=["reason"])
        counts = snap.get("downlink_rejected", {})
        for reason in REASONS:
            rejected.add_metric([reason], counts.get(reason, 0))
        yield rejected

        devices = snap["devices"]
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "readings": CounterMetricFamily("edge_agent_readings", "Readings published",
                                            labels=["device"]),
            "suppressed": CounterMetricFamily(
                "edge_agent_readings_suppressed",
                "Readings held back by report-by-exception (deadband, heartbeat)",
                labels=["device"]),
            "polls": CounterMetricFamily("edge_agent_polls", "Successful polls",
                                         labels=["device"]),
            "skipped": CounterMetricFamily("edge_agent_poll_ticks_skipped",
                                           "Poll ticks skipped because a poll overran",
                                           labels=["device"]),
            "errors": CounterMetricFamily(
                "edge_agent_read_errors",
                "Failed reads and connects by kind (timeout, protocol, exception_NN, io...)",
                labels=["device", "kind"]),
            "dropped": CounterMetricFamily(
                "edge_agent_samples_dropped",
                "Samples not published on their own, by reason: rate (merged into a later "
                "sample beyond max_rate), publish_failed (the agent failed to normalise or "
                "store them)", labels=["device", "reason"]),
            "writes": CounterMetricFamily("edge_agent_writes",
                                          "Downlink writes by result (ok, refused, failed)",
                                          labels=["device", "result"]),
            "connected": GaugeMetricFamily("edge_agent_device_connected",
                                           "1 while the device is connected", labels=["device"]),
            "state": GaugeMetricFamily("edge_agent_device_state",
                                       "1 for the device's current state, 0 for the others",
                                       labels=["device", "state"]),
        }
        for device in devices:
            name = device["name"]
            families["readings"].add_metric([name], device["readings"])
            families["suppressed"].add_metric([name], device["suppressed"])
            families["polls"].add_metric([name], device["polls"])
            families["skipped"].add_metric([name], device["skipped_ticks"])
            for kind, count in sorted(device["errors"].items()):
                families["errors"].add_metric([name, kind], count)
            for reason, count in sorted(device.get("dropped", {}).items()):
                families["dropped"].add_metric([name, reason], count)
            for result, count in sorted(device["writes"].items()):
                families["writes"].add_metric([name, result], count)
            families["connected"].add_metric([name], device["state"] == "connected")
            for state in DEVICE_STATES:
                families["state"].add_metric([name, state], device["state"] == state)
        yield from families.values()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))
