"""Fleets end to end: agents of one config directory, each running its own devices; node
name conflicts; a reload that moves a device between nodes. Real Mosquitto, simulators over
TCP and a pty, the agents as `edge-agent run -c DIR` processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent import fleet
from edge_agent_simulators.broker import free_port
from tests.helpers import SimulatorThread, Subscriber, run_cli, wait_until
from tests.inprocess import http_get, sample_value, scrape

NODES = ("edge-a", "edge-b", "edge-c")
REGISTER = {"name": "level", "address": 0, "type": "uint16",
            "value": {"counter": {"start": 0, "rate": 100}}}  # changes at every poll
SIM_SPEC = {"devices": [
    {"name": "gateway", "kind": "modbus-tcp", "units": [
        {"unit": unit, "registers": [REGISTER]} for unit in (1, 2, 3)]},
    {"name": "shared-meter", "kind": "modbus-tcp", "units": [
        {"unit": 9, "registers": [REGISTER]}]},
    {"name": "gps", "kind": "nmea", "rate": 10.0},
]}


def unit_device(sims: SimulatorThread, name: str, unit: int, sim: str = "gateway",
                **extra: Any) -> dict[str, Any]:
    # no retries and a generous timeout: every request the simulator counts is one poll that
    # was published or one failure the agent logged, even on a loaded machine
    device = dict(sims.by_name(sim).device_config, name=name, unit=unit, interval=0.1,
                  timeout=5.0, retries=0, **extra)
    device["points"] = [{"name": "level", "table": "holding", "address": 0, "type": "uint16"}]
    return device


class ConfigMapVolume:
    """A directory laid out as the kubelet mounts a ConfigMap: each key a symlink through
    `..data` to a timestamped folder, an update one atomic swap of `..data`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.version = 0

    def write(self, files: dict[str, Any]) -> None:
        self.version += 1
        folder = self.root / f"..v{self.version}"
        folder.mkdir()
        for key, content in files.items():
            (folder / key).write_text(yaml.safe_dump(content))
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        os.replace(link, self.root / "..data")
        for key in files:
            if not (self.root / key).is_symlink():
                (self.root / key).symlink_to(f"..data/{key}")
        for stale in self.root.iterdir():
            if stale.is_symlink() and stale.name not in files and not stale.name.startswith(".."):
                stale.unlink()


@pytest.fixture
def fleet_sims():
    sims = SimulatorThread(SIM_SPEC)
    yield sims
    sims.close()


def fleet_files(sims: SimulatorThread, broker_url: str, **mqtt: Any) -> dict[str, Any]:
    """gw-a and gw-b scoped by patterns, gw-c and a GPS on a pty in edge-c's own file, and
    `everywhere` without `nodes:`."""
    shared = {"mqtt": {"url": broker_url, **mqtt}, "devices": [
        unit_device(sims, "gw-a", 1, nodes=["edge-a"]),
        unit_device(sims, "gw-b", 2, nodes=["edge-[b]*"]),
        unit_device(sims, "everywhere", 9, sim="shared-meter"),
    ]}
    gps = dict(sims.by_name("gps").device_config, name="gps-c")
    return {"config.yaml": shared,
            "nodes__edge-c.yaml": {"devices": [unit_device(sims, "gw-c", 3), gps]}}


def start_node(start_agent, root: Path, node: str, name: str | None = None) -> Any:
    port = free_port()
    agent = start_agent(root, env={"NODE_NAME": node, "EDGE_AGENT_HTTP__LISTEN":
                                   f"127.0.0.1:{port}"}, name=name or node)
    agent.http = f"http://127.0.0.1:{port}"
    return agent


def device_labels(agent: Any) -> set[str]:
    wait_until(lambda: _get(agent, "/metrics")[0] == 200, what="/metrics up")
    families = scrape(agent.http + "/metrics")
    return {sample.labels["device"] for family in families.values()
            for sample in family.samples if "device" in sample.labels}


def _get(agent: Any, path: str) -> tuple[int, str]:
    try:
        return http_get(agent.http + path, timeout=2)
    except OSError:
        return 0, ""


def topic_pairs(subscriber: Subscriber, kind: str) -> set[tuple[str, str]]:
    """(node, device) of every message seen on edge/<node>/<device>/<kind>."""
    pairs = set()
    for topic, payload, _, _ in list(subscriber.messages):
        parts = topic.split("/")
        if len(parts) == 4 and parts[3] == kind and payload:
            pairs.add((parts[1], parts[2]))
    return pairs


def node_status(subscriber: Subscriber, node: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in subscriber.on(f"edge/{node}/status") if p]


def test_three_nodes_of_one_config_directory_each_run_only_their_devices(
        mosquitto, subscriber, fleet_sims, start_agent, tmp_path):
    volume = ConfigMapVolume(tmp_path / "edge-agent")
    volume.write(fleet_files(fleet_sims, mosquitto.url))
    agents = {node: start_node(start_agent, volume.root, node) for node in NODES}
    expected = {"edge-a": {"gw-a", "everywhere"}, "edge-b": {"gw-b", "everywhere"},
                "edge-c": {"gw-c", "gps-c", "everywhere"}}
    for node, devices in expected.items():
        for device in devices:
            subscriber.wait_for(f"edge/{node}/{device}/telemetry", count=3)

    # the fleet, as a subscriber lists it: each node's status names its devices and config
    for node, devices in expected.items():
        status = wait_until(lambda n=node: [s for s in node_status(subscriber, n)
                                            if s["state"] == "online"], what=f"{node} online")
        assert set(status[-1]["devices"]) == devices
        assert status[-1]["config"] == fleet.load_node(volume.root, node).hash
        # no metric series for another node's devices
        assert device_labels(agents[node]) == devices

    for agent in agents.values():
        assert agent.stop() == 0
    # telemetry and statuses only under the node that runs the device
    runs = {(node, device) for node, devices in expected.items() for device in devices}
    assert topic_pairs(subscriber, "telemetry") == runs
    assert topic_pairs(subscriber, "status") == runs

    # counted at the simulator: each gateway unit was polled by one node only, `everywhere`
    # by all three. Each node's connect asks the unit once (the driver's probe: one
    # register); after that every request is a published poll or a logged failure (one more
    # at most: a poll cut short by the stop); another node polling a unit ten times a
    # second would show as dozens of requests more.
    gateway = fleet_sims.by_name("gateway").units
    meter = fleet_sims.by_name("shared-meter").units[9]
    for unit, node, device in ((1, "edge-a", "gw-a"), (2, "edge-b", "gw-b"),
                               (3, "edge-c", "gw-c")):
        polls = fleet_sims.call(lambda u=unit: sum(gateway[u].requests.values())) - 1
        failed = failures(agents[node], device)
        published = received(subscriber, f"edge/{node}/{device}/telemetry", polls - failed)
        assert published <= polls <= published + failed + 1, (device, published, polls)
    polls = fleet_sims.call(lambda: sum(meter.requests.values())) - len(NODES)
    failed = sum(failures(agents[node], "everywhere") for node in NODES)
    published = wait_until(
        lambda: (n := sum(len(subscriber.on(f"edge/{node}/everywhere/telemetry"))
                          for node in NODES)) >= polls - failed - 3 and n,
        what="everywhere's telemetry")
    assert published <= polls <= published + failed + 3


def failures(agent: Any, device: str) -> int:
    return sum(1 for line in agent.log_lines() if line.get("device") == device
               and line.get("event") in ("poll_failed", "device_failed"))


def received(subscriber: Subscriber, topic: str, at_least: int) -> int:
    """Telemetry messages on `topic` once at least `at_least - 1` arrived (what the agents
    published before they stopped may still be on its way to the subscriber)."""
    return wait_until(lambda: (n := len(subscriber.on(topic))) >= at_least - 1 and n,
                      timeout=20, what=f"telemetry on {topic} ({at_least - 1} or more)")


def test_a_reload_moves_a_device_from_one_node_to_another(
        mosquitto, subscriber, fleet_sims, start_agent, tmp_path):
    volume = ConfigMapVolume(tmp_path / "edge-agent")
    files = fleet_files(fleet_sims, mosquitto.url)
    volume.write(files)
    a = start_node(start_agent, volume.root, "edge-a")
    b = start_node(start_agent, volume.root, "edge-b")
    subscriber.wait_for("edge/edge-a/gw-a/telemetry", count=3)
    subscriber.wait_for("edge/edge-a/everywhere/telemetry", count=3)
    hash_before = fleet.load_node(volume.root, "edge-a").hash

    # gw-a moves to edge-b: a ConfigMap update (one atomic ..data swap) plus SIGHUP on one
    files["config.yaml"]["devices"][0]["nodes"] = ["edge-b"]
    volume.write(files)
    a.process.send_signal(signal.SIGHUP)  # the other notices the file change on its own
    subscriber.wait_for("edge/edge-b/gw-a/telemetry", count=3)
    wait_until(lambda: b"" in subscriber.on("edge/edge-a/gw-a/status"),
               what="edge-a's retained gw-a status cleared")
    stopped = [json.loads(p) for p in subscriber.on("edge/edge-a/gw-a/status") if p]
    stopped = [s for s in stopped if s["state"] != "connected"]
    assert stopped and "not this node's" in stopped[-1]["error"]
    status = wait_until(lambda: [s for s in node_status(subscriber, "edge-a")
                                 if s["state"] == "online" and "gw-a" not in s["devices"]],
                        what="edge-a's status without gw-a")
    assert status[-1]["devices"] == ["everywhere"]
    assert status[-1]["config"] != hash_before
    moved = [s for s in node_status(subscriber, "edge-b") if s["state"] == "online"]
    assert set(moved[-1]["devices"]) == {"gw-b", "everywhere", "gw-a"}

    # edge-a publishes no more gw-a; its other device kept running (one seq series)
    seen = len(subscriber.on("edge/edge-a/gw-a/telemetry"))
    count = len(subscriber.on("edge/edge-a/everywhere/telemetry"))
    subscriber.wait_for("edge/edge-a/everywhere/telemetry", count=count + 5)
    assert len(subscriber.on("edge/edge-a/gw-a/telemetry")) <= seen + 1  # at most in flight
    seqs = [m["seq"] for m in subscriber.json_on("edge/edge-a/everywhere/telemetry")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    connects = [line for line in a.log_lines() if line.get("event") == "device_connected"
                and line.get("device") == "everywhere"]
    assert len(connects) == 1
    assert a.stop() == 0 and b.stop() == 0


def test_a_configmap_update_for_another_node_is_no_reload_on_this_one(
        mosquitto, subscriber, fleet_sims, start_agent, tmp_path):
    """The kubelet swaps `..data` for any key's change, so every node's files look changed:
    a node whose config comes out the same neither reloads nor counts one."""
    volume = ConfigMapVolume(tmp_path / "edge-agent")
    files = fleet_files(fleet_sims, mosquitto.url)
    files["config.yaml"]["log_level"] = "debug"
    volume.write(files)
    a = start_node(start_agent, volume.root, "edge-a")
    subscriber.wait_for("edge/edge-a/gw-a/telemetry", count=2)

    files["nodes__edge-c.yaml"]["devices"].pop()  # edge-c's own file: not edge-a's business
    volume.write(files)
    unchanged = wait_until(lambda: [line for line in a.log_lines()
                                    if line.get("event") == "config_unchanged"],
                           what="edge-a looked at the swap")
    assert unchanged[0]["reason"] == "file changed"
    assert not [line for line in a.log_lines() if line.get("event") == "config_reloaded"]
    metrics = scrape(a.http + "/metrics")
    assert sample_value(metrics, "edge_agent_config_reloads_total") == 0

    files["config.yaml"]["devices"].pop(0)  # gw-a gone: edge-a's business
    volume.write(files)
    wait_until(lambda: [line for line in a.log_lines() if line.get("event") == "config_reloaded"],
               what="edge-a reloaded")
    assert sample_value(scrape(a.http + "/metrics"), "edge_agent_config_reloads_total") == 1
    assert a.stop() == 0


@pytest.mark.parametrize(("protocol", "wire"), [("3.1.1", "json"), ("5", "json"),
                                               ("3.1.1", "sparkplug")])
def test_two_agents_with_one_node_name_report_the_conflict_and_back_off(
        protocol, wire, mosquitto, fleet_sims, start_agent, tmp_path):
    files = fleet_files(fleet_sims, mosquitto.url, protocol=protocol, reconnect_max=4,
                        format=wire)
    # every connection announces the agent: its status (json) or its claim (sparkplug)
    announcements = "edge/edge-a/status" if wire == "json" else "edge/edge-a/instance"
    root = tmp_path / "fleet"
    root.mkdir()
    for key, content in files.items():
        (root / key).write_text(yaml.safe_dump(content))
    status = Subscriber(mosquitto.port, announcements)
    try:
        first = start_node(start_agent, root, "edge-a", name="first")
        wait_until(lambda: online_announcements(status), what="the first agent online")
        second = start_node(start_agent, root, "edge-a", name="second")

        def conflict_logged(agent: Any) -> bool:
            return any(line.get("event") == "node_name_conflict" and
                       line.get("level") == "error" for line in agent.log_lines())

        for agent in (first, second):
            wait_until(lambda a=agent: conflict_logged(a), timeout=15, what="conflict logged")
            _code, text = wait_until(lambda a=agent: (r := _get(a, "/readyz"))[0] == 503
                                    and "node name conflict" in r[1] and r, timeout=10,
                                    what="/readyz naming the conflict")
            assert "edge-a" in text
            families = scrape(agent.http + "/metrics")
            assert families["edge_agent_node_conflict"].samples[0].value == 1

        # bounded: with reconnect_max 4 s, a conflicting agent waits 2-4 s before each
        # reconnect, so in 8 s the broker sees at most 5 connections of each (a reconnect
        # at once, as after an ordinary connection loss, would be 16 or more). The poll ends
        # early if the bound is broken.
        before = len(online_announcements(status))
        deadline = time.monotonic() + 8.0
        wait_until(lambda: len(online_announcements(status)) - before > 10
                   or time.monotonic() >= deadline, timeout=10, interval=0.1,
                   what="the observation window")
        assert len(online_announcements(status)) - before <= 10
        assert any(s.get("conflict") for s in announced(status))
    finally:
        status.close()


def announced(subscriber: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for _, p, _, _ in list(subscriber.messages) if p]


def online_announcements(subscriber: Subscriber) -> list[dict[str, Any]]:
    """One per connection: an agent announces itself on every connect (its online status,
    or in Sparkplug its retained instance claim)."""
    return [s for s in announced(subscriber) if s.get("state", "online") == "online"]


def test_run_with_a_broken_file_of_its_own_node_exits_2_naming_it(tmp_path):
    root = tmp_path / "fleet"
    (root / "nodes").mkdir(parents=True)
    (root / "config.yaml").write_text("mqtt: {url: mqtt://127.0.0.1:1}\n")
    (root / "nodes" / "edge-a.yaml").write_text("devices:\n  - name: x\n    nodes: [1\n")
    done = run_cli("run", "-c", str(root), env={"NODE_NAME": "edge-a"})
    assert done.returncode == 2
    assert "nodes/edge-a.yaml: line" in done.stderr and "invalid YAML" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def sparkplug_messages(subscriber: Subscriber, node: str) -> list[tuple[str, str | None, dict]]:
    """(verb, device, decoded payload) of one edge node, in the order received."""
    from tests.test_sparkplug_decoder import decode

    out = []
    for topic, payload, _, _ in list(subscriber.messages):
        parts = topic.split("/")
        if len(parts) >= 4 and parts[0] == "spBv1.0" and parts[3] == node:
            out.append((parts[2], parts[4] if len(parts) > 4 else None, decode(payload)))
    return out


def test_sparkplug_a_moved_device_dies_on_one_node_and_is_born_on_the_other(
        mosquitto, fleet_sims, start_agent, tmp_path):
    from tests.test_sparkplug_end_to_end import check_session_rules

    files = fleet_files(fleet_sims, mosquitto.url, format="sparkplug",
                        sparkplug={"group_id": "plant"})
    root = tmp_path / "fleet"
    root.mkdir()
    for key, content in files.items():
        (root / key).write_text(yaml.safe_dump(content))
    sub = Subscriber(mosquitto.port, "spBv1.0/#")
    try:
        a = start_node(start_agent, root, "edge-a")
        b = start_node(start_agent, root, "edge-b")

        def of(node: str, verb: str, device: str | None = None) -> list[dict]:
            return [p for v, d, p in sparkplug_messages(sub, node)
                    if v == verb and (device is None or d == device)]

        wait_until(lambda: len(of("edge-a", "DDATA", "gw-a")) >= 3, timeout=20,
                   what="gw-a on edge-a")
        files["config.yaml"]["devices"][0]["nodes"] = ["edge-b"]
        (root / "config.yaml").write_text(yaml.safe_dump(files["config.yaml"]))
        a.process.send_signal(signal.SIGHUP)
        b.process.send_signal(signal.SIGHUP)
        wait_until(lambda: of("edge-a", "DDEATH", "gw-a"), timeout=20,
                   what="DDEATH of gw-a on edge-a")
        wait_until(lambda: of("edge-b", "DBIRTH", "gw-a") and
                   len(of("edge-b", "DDATA", "gw-a")) >= 3, timeout=20, what="gw-a born on edge-b")
        count = len(of("edge-a", "DDATA", "everywhere"))
        wait_until(lambda: len(of("edge-a", "DDATA", "everywhere")) >= count + 3, timeout=20,
                   what="edge-a's other device going on")
        # no NBIRTH again: the node's seq went on across the move, for every device
        assert len(of("edge-a", "NBIRTH")) == 1 and len(of("edge-b", "NBIRTH")) == 1
        check_session_rules(sparkplug_messages(sub, "edge-a"))
        check_session_rules(sparkplug_messages(sub, "edge-b"))
        assert a.stop() == 0 and b.stop() == 0
    finally:
        sub.close()
