"""Delivery through real failures: a stopped broker, a SIGKILLed agent, a full buffer.

The broker saves sessions on a clean stop and the subscriber has a persistent QoS 1 session
that reconnects by itself, so whatever the agent sends after a broker restart is queued for
the subscriber even if the agent gets there first. Every test reads the agent's final seq per
device from its buffer file after it stopped, and checks the subscriber saw 1..final.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent_simulators.broker import free_port
from tests.delivery_support import (
    PersistentSubscriber,
    SilentBroker,
    SmallFilesystem,
    agent_config,
    assert_no_seq_reused,
    buffer_state,
    closed_port_url,
    events,
    flip_blob_to_text,
    flip_stored_bytes,
    gaps_and_duplicates,
    modbus_devices,
    persistent_broker,
    sleep_through,
    stored_rows,
)
from tests.helpers import AgentProcess, SimulatorThread, Subscriber, wait_until

INFLIGHT = 32


@pytest.fixture
def broker() -> Iterator:
    broker = persistent_broker().start()
    yield broker
    broker.stop()


def run_sims(spec: dict) -> SimulatorThread:
    return SimulatorThread(spec)


def each_device_has(sub: PersistentSubscriber, devices: int, count: int) -> bool:
    seqs = sub.seqs()
    return len(seqs) == devices and all(len(set(s)) >= count for s in seqs.values())


def test_broker_down_30s_while_5_devices_poll_at_10hz_loses_nothing(broker, start_agent,
                                                                    tmp_path):
    sims = run_sims(modbus_devices(5, interval=0.1))
    sub = PersistentSubscriber(broker.port)
    buffer = tmp_path / "buffer.sqlite3"
    try:
        agent = start_agent(agent_config(sims, broker.url, buffer, inflight=INFLIGHT))
        wait_until(lambda: each_device_has(sub, 5, 10), what="10 messages per device")

        broker.stop()
        wait_until(lambda: events(agent, "mqtt_disconnected"), what="the agent to notice")
        sleep_through(30)
        outage_backlog = buffer_state(buffer)[1]
        broker.start()

        wait_until(lambda: len(events(agent, "mqtt_connected")) >= 2, what="reconnect")
        restarted = time.time()
        # live data after the backlog: a message per device read after the restart
        wait_until(lambda: all(any(r["ts"] > restarted * 1000 for r in m["readings"])
                               for m in _latest_per_device(sub).values())
                   and len(_latest_per_device(sub)) == 5, timeout=30, what="live data")
        assert agent.stop() == 0

        last, kept = buffer_state(buffer)
        assert kept == 0
        assert outage_backlog >= 5 * 10 * 25  # ~30 s at 5 x 10 Hz were buffered on disk
        wait_until(lambda: each_device_has(sub, 5, min(last.values())), timeout=30,
                   what="every seq at the subscriber")
        missing, duplicates = gaps_and_duplicates(sub.seqs(), last)
        assert missing == 0
        assert duplicates - sub.redeliveries() <= INFLIGHT
    finally:
        sub.close()
        sims.close()


def test_at_qos0_every_reading_arrives_and_the_outbox_empties_as_it_is_written(
        broker, start_agent, tmp_path):
    """QoS 0 has no PUBACK: a message leaves the outbox once the socket has taken it whole
    (LeanClient's short road reports it as paho's writer would)."""
    sims = run_sims(modbus_devices(3, interval=0.05))
    sub = PersistentSubscriber(broker.port)
    buffer = tmp_path / "buffer.sqlite3"
    try:
        agent = start_agent(agent_config(sims, broker.url, buffer, qos=0))
        wait_until(lambda: each_device_has(sub, 3, 40), what="40 messages per device")
        assert agent.stop() == 0
        last, kept = buffer_state(buffer)
        assert kept == 0  # every message published was reported written
        wait_until(lambda: each_device_has(sub, 3, min(last.values())), timeout=10,
                   what="every seq at the subscriber")
        assert gaps_and_duplicates(sub.seqs(), last) == (0, 0)
    finally:
        sub.close()
        sims.close()


def _latest_per_device(sub: PersistentSubscriber) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for message in sub.messages():
        if message["seq"] >= latest.get(message["device"], {"seq": 0})["seq"]:
            latest[message["device"]] = message
    return latest


def _restart_lost_nothing(sub: PersistentSubscriber, buffer: Path, again: AgentProcess,
                          at_kill: dict[str, int]) -> None:
    """After a SIGKILL and a restart: new readings flow; after a clean stop nothing is kept,
    no seq is missing, and seq continued instead of starting over (a repeated seq is always
    the very same message, a resend, never a new reading under an old number)."""
    wait_until(lambda: all(max(s) > at_kill[d] + 5 for d, s in sub.seqs().items()),
               timeout=20, what="new readings after the restart")
    assert again.stop() == 0
    last, kept = buffer_state(buffer)
    assert kept == 0
    wait_until(lambda: each_device_has(sub, 2, min(last.values())), what="all seqs")
    missing, duplicates = gaps_and_duplicates(sub.seqs(), last)
    assert missing == 0
    assert_no_seq_reused(sub.records)
    assert duplicates - sub.redeliveries() <= 2 * INFLIGHT


def test_agent_sigkilled_mid_stream_and_restarted_leaves_no_gap(broker, start_agent, tmp_path):
    sims = run_sims(modbus_devices(2, interval=0.05))
    sub = PersistentSubscriber(broker.port)
    buffer = tmp_path / "buffer.sqlite3"
    try:
        config = agent_config(sims, broker.url, buffer, inflight=INFLIGHT)
        agent = start_agent(config, name="first")
        wait_until(lambda: each_device_has(sub, 2, 10), what="streaming")
        broker.stop()  # build a backlog on disk, then kill the agent in the middle of it
        wait_until(lambda: buffer_state(buffer)[1] >= 40, what="a backlog on disk")
        agent.stop(signal.SIGKILL)
        seqs_at_kill, backlog = buffer_state(buffer)
        broker.start()

        assert backlog >= 40
        again = start_agent(config, name="second")
        assert events(again, "buffer_backlog") or wait_until(
            lambda: events(again, "buffer_backlog"), what="backlog noticed")
        _restart_lost_nothing(sub, buffer, again, seqs_at_kill)
    finally:
        sub.close()
        sims.close()


def test_agent_sigkilled_while_the_broker_keeps_up_leaves_no_gap(broker, start_agent, tmp_path):
    """Killed in the live window: the newest rows are only in the journal
    (edge_agent.store.journal), which the restart replays into the buffer."""
    sims = run_sims(modbus_devices(2, interval=0.05))
    sub = PersistentSubscriber(broker.port)
    buffer = tmp_path / "buffer.sqlite3"
    try:
        config = agent_config(sims, broker.url, buffer, inflight=INFLIGHT)
        agent = start_agent(config, name="first")
        wait_until(lambda: each_device_has(sub, 2, 20), what="streaming")
        assert buffer.with_name(buffer.name + ".journal").exists()
        agent.stop(signal.SIGKILL)
        at_kill = {d: max(s) for d, s in sub.seqs().items()}
        again = start_agent(config, name="second")
        _restart_lost_nothing(sub, buffer, again, at_kill)
    finally:
        sub.close()
        sims.close()


def test_buffer_limit_during_outage_drops_oldest_and_counts_exactly_the_gap(
        broker, start_agent, tmp_path):
    sims = run_sims(modbus_devices(2, interval=0.05, registers=10))
    sub = PersistentSubscriber(broker.port)
    buffer = tmp_path / "buffer.sqlite3"
    try:
        config = agent_config(sims, broker.url, buffer, inflight=INFLIGHT)
        config["buffer"]["max_bytes"] = 64 * 1024
        agent = start_agent(config)
        wait_until(lambda: each_device_has(sub, 2, 5), what="streaming")
        broker.stop()
        # generous: on a loaded machine the devices poll slower and the backlog compresses
        wait_until(lambda: events(agent, "buffer_full_dropping_oldest"), timeout=60,
                   what="the buffer to overflow")
        sleep_through(2)  # keep overflowing for a while
        broker.start()
        wait_until(lambda: events(agent, "buffer_drops_ended"), timeout=60,
                   what="the backlog to drain")
        before = {d: max(s) for d, s in sub.seqs().items()}
        wait_until(lambda: all(max(s) > before[d] + 5 for d, s in sub.seqs().items()),
                   what="the agent to keep running")
        assert agent.stop() == 0

        last, kept = buffer_state(buffer)
        assert kept == 0
        wait_until(lambda: all(max(sub.seqs()[d]) == last[d] for d in last), what="the end")
        dropped = events(agent, "buffer_closed")[-1]["dropped"]
        missing, _ = gaps_and_duplicates(sub.seqs(), last)
        assert dropped > 50
        # a message the broker took just before it stopped, whose PUBACK never came back, is
        # dropped later yet was delivered: at most the in-flight window of them
        assert missing <= dropped <= missing + INFLIGHT
        assert events(agent, "buffer_drops_ended")[0]["dropped"] == dropped
        assert len(events(agent, "buffer_full_dropping_oldest")) == 1  # once per episode
    finally:
        sub.close()
        sims.close()


def test_sigterm_with_broker_down_keeps_the_backlog_on_disk_and_exits_0(
        broker, start_agent, tmp_path):
    sims = run_sims(modbus_devices(1, interval=0.05))
    buffer = tmp_path / "buffer.sqlite3"
    try:
        config = agent_config(sims, broker.url, buffer)
        config["shutdown_grace"] = 1
        agent = start_agent(config, env={"NODE_NAME": "term"})
        wait_until(lambda: events(agent, "mqtt_connected"), what="connected")
        broker.stop()
        wait_until(lambda: buffer_state(buffer)[1] >= 20, what="a backlog")
        started = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - started < 5  # grace is 1 s
        stopped = events(agent, "agent_stopped")[0]
        assert stopped["drained"] is False and stopped["kept"] >= 20
        assert buffer_state(buffer)[1] == stopped["kept"]
    finally:
        sims.close()


def test_sigterm_drains_publishes_offline_and_exits_0_with_mqtt5(broker, start_agent, tmp_path):
    sims = run_sims(modbus_devices(1, interval=0.05))
    buffer = tmp_path / "buffer.sqlite3"
    status = Subscriber(broker.port, "edge/v5/status")
    sub = PersistentSubscriber(broker.port)
    try:
        config = agent_config(sims, broker.url, buffer, protocol="5")
        agent = start_agent(config, env={"NODE_NAME": "v5"})
        status.wait_for("v5/status", where=lambda m: m["state"] == "online")
        wait_until(lambda: each_device_has(sub, 1, 10), what="telemetry over MQTT 5")
        assert agent.stop() == 0
        status.wait_for("v5/status", where=lambda m: m["state"] == "offline", timeout=5)
        last, kept = buffer_state(buffer)
        assert kept == 0 and events(agent, "agent_stopped")[0]["drained"] is True
        wait_until(lambda: max(sub.seqs()["dev-0"]) == last["dev-0"], what="the last seq")
        assert gaps_and_duplicates(sub.seqs(), last) == (0, 0)
    finally:
        status.close()
        sub.close()
        sims.close()


# -- disk faults and corruption (issue 12) -------------------------------------------------------
def _rows_in(buffer: Path) -> int:
    try:
        return len(stored_rows(buffer))
    except sqlite3.OperationalError:  # not there yet, or its schema not yet written
        return 0


def _offline_backlog(start_agent, sims: SimulatorThread, buffer: Path, rows: int) -> None:
    """Runs the agent against a broker URL where nothing listens until `rows` wait on disk."""
    config = agent_config(sims, closed_port_url(), buffer)
    config["shutdown_grace"] = 1
    agent = start_agent(config, name="offline")
    wait_until(lambda: _rows_in(buffer) >= rows, timeout=30, what=f"{rows} rows on disk")
    assert agent.stop() == 0


def _no_tracebacks(agent) -> None:
    raw = [line["raw"] for line in agent.log_lines() if "raw" in line]
    assert not any("Traceback" in text for text in raw), raw[:5]


def _missing(seqs: dict[str, list[int]], last: dict[str, int]) -> set[tuple[str, int]]:
    return {(device, seq) for device, final in last.items() for seq in range(1, final + 1)
            if seq not in set(seqs.get(device, []))}


def test_damaged_rows_are_quarantined_and_everything_else_arrives(broker, start_agent,
                                                                  tmp_path):
    sims = run_sims(modbus_devices(2, interval=0.02))
    buffer = tmp_path / "buffer.sqlite3"
    try:
        _offline_backlog(start_agent, sims, buffer, rows=400)
        rows = stored_rows(buffer)
        plain = [r for r in rows if r[3] == 0][3][0]
        zipped = [r for r in rows if r[3] == 1][50][0]
        damaged = {flip_stored_bytes(buffer, plain), flip_stored_bytes(buffer, zipped)}
        flip_blob_to_text(buffer, [r for r in rows if r[3] == 1][80][0])  # intact: delivered
        backlog_last = {d: max(s for _, dd, s, _ in rows if dd == d) for d in ("dev-0", "dev-1")}

        sub = PersistentSubscriber(broker.port)
        agent = start_agent(agent_config(sims, broker.url, buffer, inflight=INFLIGHT),
                            name="online")
        wait_until(lambda: all(max(sub.seqs().get(d, [0])) > backlog_last[d] + 20
                               for d in backlog_last), timeout=30, what="backlog and live data")
        assert agent.stop() == 0
        last, kept = buffer_state(buffer)
        assert kept == 0
        wait_until(lambda: all(max(sub.seqs()[d]) == last[d] for d in last), what="the end")
        assert _missing(sub.seqs(), last) == damaged  # nothing else lost, nothing garbled
        assert_no_seq_reused(sub.records)
        reported = events(agent, "buffer_rows_quarantined")
        assert {(r["device"], r["first_seq"]) for e in reported for r in e["ranges"]} == damaged
        assert events(agent, "buffer_closed")[-1]["quarantined"] == 2
        assert events(agent, "agent_stopped")
        _no_tracebacks(agent)
        sub.close()
    finally:
        sims.close()


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_buffer_file_lost_while_running_is_rebuilt_and_nothing_is_lost(
        broker, start_agent, tmp_path, fault):
    sims = run_sims(modbus_devices(2, interval=0.05))
    sub = PersistentSubscriber(broker.port)
    buffer = tmp_path / "buffer.sqlite3"
    port = free_port()
    try:
        config = agent_config(sims, broker.url, buffer, inflight=INFLIGHT)
        config["http"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
        agent = start_agent(config)
        wait_until(lambda: each_device_has(sub, 2, 10), what="streaming")
        broker.stop()  # a backlog that exists only in that file
        wait_until(lambda: _rows_in(buffer) >= 60, what="a backlog on disk")
        if fault == "deleted":
            for name in ("buffer.sqlite3", "buffer.sqlite3-wal", "buffer.sqlite3-shm"):
                (tmp_path / name).unlink(missing_ok=True)
        else:
            stranger = tmp_path / "stranger.sqlite3"
            with sqlite3.connect(stranger) as db:
                db.execute("CREATE TABLE unrelated (x)")
            db.close()
            os.replace(stranger, buffer)
        wait_until(lambda: events(agent, "buffer_recovered"), timeout=10, what="recovery")
        assert events(agent, "buffer_file_lost")
        ready = wait_until(lambda: _http_get(port, "/readyz"), what="/readyz")
        assert ready[0] == 503 and "the buffer file was rebuilt" in ready[1]
        assert "edge_agent_buffer_recoveries_total 1.0" in _http_get(port, "/metrics")[1]
        broker.start()
        before = {d: max(s) for d, s in sub.seqs().items()}
        wait_until(lambda: all(max(s) > before[d] + 60 for d, s in sub.seqs().items()),
                   timeout=30, what="the backlog and live data")
        assert agent.stop() == 0
        last, kept = buffer_state(buffer)  # the rebuilt file carries the seqs on
        assert kept == 0
        wait_until(lambda: all(max(sub.seqs()[d]) == last[d] for d in last), what="the end")
        missing, _ = gaps_and_duplicates(sub.seqs(), last)
        assert missing == 0
        assert_no_seq_reused(sub.records)
        _no_tracebacks(agent)
    finally:
        sub.close()
        sims.close()


def test_a_corrupt_buffer_moved_aside_between_runs_never_reuses_a_seq(broker, start_agent,
                                                                      tmp_path):
    sims = run_sims(modbus_devices(1, interval=0.05))
    sub = PersistentSubscriber(broker.port)
    buffer = tmp_path / "buffer.sqlite3"
    try:
        config = agent_config(sims, broker.url, buffer)
        first = start_agent(config, name="first")
        wait_until(lambda: each_device_has(sub, 1, 20), what="streaming")
        assert first.stop() == 0
        seen = max(sub.seqs()["dev-0"])
        for name in ("buffer.sqlite3-wal", "buffer.sqlite3-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        buffer.write_bytes(b"bit rot" * 2000)

        second = start_agent(config, name="second")
        wait_until(lambda: len(sub.seqs()["dev-0"]) >= seen + 20, what="the second run")
        assert second.stop() == 0
        assert events(second, "buffer_corrupt_moved_aside")
        jump = events(second, "seq_resumed_after_reservation")[0]
        new = sub.seqs()["dev-0"][seen:]
        assert min(new) > seen  # never a number a subscriber has seen
        assert min(new) - seen - 1 <= jump["gap_at_most"]  # the gap is reported
        assert_no_seq_reused(sub.records)
    finally:
        sub.close()
        sims.close()


def _http_get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:
        return None


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_read_only_or_full_buffer_folder_keeps_json_telemetry_flowing(
        broker, start_agent, tmp_path, fault):
    fs = SmallFilesystem(tmp_path / "fs", size="2m")
    sims = run_sims(modbus_devices(2, interval=0.02, registers=10))
    buffer = fs.path / "buffer.sqlite3"
    port = free_port()
    try:
        _offline_backlog(start_agent, sims, buffer, rows=50)  # kept across the fault
        sub = PersistentSubscriber(broker.port)
        config = agent_config(sims, broker.url, buffer, inflight=INFLIGHT)
        config["http"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
        if fault == "read-only":
            fs.read_only()
        else:
            broker.stop()  # the backlog grows until the disk is full
            fs.fill(leave=96 * 1024)
        agent = start_agent(config, name="faulty")
        wait_until(lambda: events(agent, "buffer_degraded"), timeout=30, what="degraded")
        status, body = wait_until(lambda: _http_get(port, "/readyz"), what="/readyz")
        assert status == 503 and "buffer" in body
        metrics = wait_until(lambda: _http_get(port, "/metrics"), what="/metrics")[1]
        assert "edge_agent_buffer_degraded 1.0" in metrics
        if fault == "full":
            broker.start()
        before = {d: max(s) for d, s in sub.seqs().items()} if sub.seqs() else {}
        wait_until(lambda: len(sub.seqs()) == 2 and all(
            max(s) > before.get(d, 0) + 50 for d, s in sub.seqs().items()),
            timeout=30, what="telemetry from the degraded agent")
        assert agent.stop() == 0
        last = {d: max(s) for d, s in sub.seqs().items()}
        missing, _ = gaps_and_duplicates(sub.seqs(), last)
        assert missing == 0  # the backlog on the read-only disk was read and sent too
        assert_no_seq_reused(sub.records)
        assert events(agent, "agent_stopped")
        _no_tracebacks(agent)
        sub.close()
    finally:
        sims.close()
        fs.close()


def test_readyz_reports_a_stalled_pump_and_sigterm_still_exits_0(start_agent, tmp_path):
    """Connected, messages waiting, nothing acknowledged for the keepalive: not ready."""
    sims = run_sims(modbus_devices(1, interval=0.05))
    broker = SilentBroker()
    port = free_port()
    try:
        config = agent_config(sims, broker.url, tmp_path / "buffer.sqlite3", keepalive=5)
        config["http"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
        config["shutdown_grace"] = 1
        agent = start_agent(config)
        wait_until(lambda: events(agent, "mqtt_connected"), what="connected")
        ready = wait_until(lambda: _http_get(port, "/readyz"), what="/readyz")
        assert ready[0] == 200  # connected, and the window is still filling
        stalled = wait_until(lambda: (r := _http_get(port, "/readyz")) and r[0] == 503 and r,
                             timeout=20, what="/readyz to report the stall")
        assert "publishing stalled" in stalled[1] and broker.publishes > 0
        metrics = _http_get(port, "/metrics")[1]
        seconds = next(float(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith("edge_agent_publish_stalled_seconds"))
        assert seconds >= 5
        assert agent.stop() == 0
        assert events(agent, "agent_stopped")[0]["kept"] > 0
        _no_tracebacks(agent)
    finally:
        broker.close()
        sims.close()


def test_buffer_deleted_on_a_full_disk_keeps_everything_in_memory(
        broker, start_agent, tmp_path):
    """The rebuild cannot write a new file (the disk is full): what the lost file held goes
    to memory, is published when the broker is back, and SIGTERM still exits 0."""
    fs = SmallFilesystem(tmp_path / "fs", size="4m")
    sims = run_sims(modbus_devices(2, interval=0.05))
    sub = PersistentSubscriber(broker.port)
    buffer = fs.path / "buffer.sqlite3"
    try:
        agent = start_agent(agent_config(sims, broker.url, buffer, inflight=INFLIGHT))
        wait_until(lambda: each_device_has(sub, 2, 10), what="streaming")
        broker.stop()
        wait_until(lambda: _rows_in(buffer) >= 40, what="a backlog on disk")
        for name in ("buffer.sqlite3", "buffer.sqlite3-wal", "buffer.sqlite3-shm"):
            (fs.path / name).unlink(missing_ok=True)
        fs.fill()
        wait_until(lambda: events(agent, "buffer_degraded"), timeout=10, what="degraded")
        # the watcher's rebuild or the next commit, whichever meets the full disk first
        assert events(agent, "buffer_degraded")[0]["during"] in ("rebuild", "commit")
        broker.start()
        before = {d: max(s) for d, s in sub.seqs().items()}
        wait_until(lambda: all(max(s) > before[d] + 60 for d, s in sub.seqs().items()),
                   timeout=30, what="the backlog and live data")
        assert agent.stop() == 0
        assert events(agent, "agent_stopped")
        last = {d: max(s) for d, s in sub.seqs().items()}
        missing, _ = gaps_and_duplicates(sub.seqs(), last)
        assert missing == 0
        assert_no_seq_reused(sub.records)
        _no_tracebacks(agent)
    finally:
        sub.close()
        sims.close()
        fs.close()


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_read_only_or_full_buffer_folder_keeps_sparkplug_publishing(
        mosquitto, start_agent, tmp_path, fault):
    """The bdSeq file lives beside the buffer: it degrades to memory like the buffer, and
    NBIRTH/DDATA keep flowing (they used to crash the session in a loop)."""
    from tests.test_sparkplug_end_to_end import (
        SIM,
        SparkplugView,
        check_session_rules,
        metric,
        sparkplug_config,
    )

    fs = SmallFilesystem(tmp_path / "fs", size="2m")
    sims = SimulatorThread(SIM)
    sub = Subscriber(mosquitto.port, "spBv1.0/#")
    view = SparkplugView(sub)
    try:
        config = sparkplug_config(sims, mosquitto.url, fs.path)
        first = start_agent(config, name="first")  # leaves a bdSeq file (next: 1)
        view.wait("NBIRTH")
        assert first.stop() == 0
        if fault == "read-only":
            fs.read_only()
        else:
            fs.fill()
        agent = start_agent(config, name="faulty")
        births = view.wait("NBIRTH", count=2)
        view.wait("DDATA", count=view_count_of(view, "DDATA") + 20)
        assert metric(births[-1], "bdSeq")["value"] == 1  # read, though it cannot be written
        degraded = events(agent, "state_file_degraded")
        assert any(e["what"] == "sparkplug bdSeq" for e in degraded)
        assert not events(agent, "mqtt_session_crashed")
        check_session_rules(view.messages())
        assert agent.stop() == 0
        assert events(agent, "agent_stopped")
        _no_tracebacks(agent)
    finally:
        sub.close()
        sims.close()
        fs.close()


def view_count_of(view, verb: str) -> int:
    return len(view.of(verb))


def test_a_row_the_wire_cannot_encode_is_quarantined_and_the_rest_are_published(
        mosquitto, tmp_path):
    """Whatever a wire raises for one stored row costs that row, never the pump."""
    import asyncio

    from edge_agent.buffer import SqliteOutbox
    from edge_agent.config import MqttConfig
    from edge_agent.transport.base import Message, PlainWire
    from edge_agent.transport.mqtt import MqttPublisher

    class PickyWire(PlainWire):
        def encode(self, row):
            if row.seq == 3:
                raise ValueError("no encoding for this one")
            return super().encode(row)

    sub = Subscriber(mosquitto.port, "t/#")
    outbox = SqliteOutbox(tmp_path / "buffer.sqlite3", 1 << 20)
    for _ in range(10):
        outbox.append("d", outbox.next_seq("d"), "t/d", b"%d" % outbox.seqs.current["d"])
    outbox.flush()

    async def publish() -> None:
        config = MqttConfig(url=mosquitto.url)
        publisher = MqttPublisher(config, "picky", outbox,
                                  PickyWire(Message("t/status", b"", retain=True)))
        task = asyncio.create_task(publisher.run())
        assert await publisher.drain(10)
        await publisher.stop(None)
        task.cancel()

    asyncio.run(publish())
    wait_until(lambda: len(sub.on("t/d")) == 9, what="nine messages")
    assert sorted(int(p) for p in sub.on("t/d")) == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert outbox.quarantined == 1 and outbox.depth() == 0
    outbox.close()
    sub.close()
