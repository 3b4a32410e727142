"""Fleet configs: `nodes:` patterns, the config directory, check-config over every node."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_agent import cli, fleet
from edge_agent.errors import ConfigError
from edge_agent.runtime import Agent

POINTS = [{"name": "t", "table": "holding", "address": 0, "type": "int16"}]


def modbus(name: str, port: str, unit: int = 1, **extra) -> dict:
    return {"name": name, "driver": "modbus", "port": port, "unit": unit,
            "points": [dict(p) for p in POINTS], **extra}


def shared(*devices: dict) -> dict:
    return {"mqtt": {"url": "mqtt://127.0.0.1:1883"}, "devices": list(devices)}


def write_fleet(root: Path, shared_data: dict, nodes: dict[str, object] | None = None,
                flat: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(shared_data))
    for node, content in (nodes or {}).items():
        path = root / f"nodes__{node}.yaml" if flat else root / "nodes" / f"{node}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return root


def check(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["check-config", *args])
    out, err = capsys.readouterr()
    return code, out, err


FLEET = shared(modbus("gw-1", "tcp://192.0.2.10:502", nodes=["edge-a"]),
               modbus("usb-meter", "usb:0403:6001", 2, nodes=["line-3-*"]),
               modbus("everywhere", "tcp://192.0.2.11:502"))
NODE_B = {"devices": [modbus("local-b", "/dev/ttyUSB0", 5)]}


@pytest.mark.parametrize("flat", [False, True], ids=["nodes-dir", "flat-configmap-keys"])
def test_each_node_runs_its_patterns_devices_the_unscoped_ones_and_its_own_file(
        tmp_path, flat):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B}, flat=flat)

    def names(node: str) -> list[str]:
        return [d.name for d in fleet.load_node(root, node).config.devices]

    assert names("edge-a") == ["gw-1", "everywhere"]
    assert names("edge-b") == ["everywhere", "local-b"]
    assert names("line-3-07") == ["usb-meter", "everywhere"]
    assert names("line-4-01") == ["everywhere"]


def test_a_single_file_with_patterns_scopes_devices_too(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(FLEET))
    assert [d.name for d in fleet.load_node(path, "line-3-1").config.devices] == [
        "usb-meter", "everywhere"]


def test_node_name_comes_from_node_name_env(tmp_path):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B})
    loaded = fleet.load_node(root, environ={"NODE_NAME": "edge-b"})
    assert loaded.node == "edge-b"
    assert [d.name for d in loaded.config.devices] == ["everywhere", "local-b"]


def test_check_config_node_prints_what_that_node_runs_and_its_hash(tmp_path, capsys):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B})
    code, out, err = check(capsys, str(root), "--node", "edge-b")
    assert code == 0, err
    assert "# node edge-b runs 2 device(s): everywhere, local-b" in out
    printed = yaml.safe_load(out)
    assert [d["name"] for d in printed["devices"]] == ["everywhere", "local-b"]
    assert fleet.load_node(root, "edge-b").hash in out
    # another node's hash differs; the same files give the same hash
    assert fleet.load_node(root, "edge-a").hash != fleet.load_node(root, "edge-b").hash
    assert fleet.load_node(root, "edge-b").hash == fleet.load_node(root, "edge-b").hash


def test_check_config_without_node_prints_the_whole_fleet(tmp_path, capsys):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B})
    code, out, err = check(capsys, str(root))
    assert code == 0, err
    assert "# nodes named in this config: edge-a, edge-b" in out
    devices = {d["name"]: d.get("nodes") for d in yaml.safe_load(out)["devices"]}
    assert devices == {"gw-1": ["edge-a"], "usb-meter": ["line-3-*"], "everywhere": None,
                       "local-b": ["edge-b"]}


def test_a_hash_ignores_another_nodes_file(tmp_path):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B})
    before = fleet.load_node(root, "edge-a").hash
    write_fleet(root, FLEET, {"edge-b": {"devices": [modbus("other", "/dev/ttyUSB1")]}})
    assert fleet.load_node(root, "edge-a").hash == before
    assert fleet.load_node(root, "edge-b").hash != before


def test_ports_are_checked_per_node_not_across_the_fleet(tmp_path, capsys):
    # the same serial port name on two nodes is two ports
    root = write_fleet(tmp_path / "ok", shared(), {
        "edge-a": {"devices": [{"name": "gps", "driver": "nmea", "port": "/dev/ttyUSB0"}]},
        "edge-b": {"devices": [{"name": "gps", "driver": "nmea", "port": "/dev/ttyUSB0"}]}})
    assert check(capsys, str(root))[0] == 0
    # on one node, a node file's device and an unscoped shared one cannot share a port
    root = write_fleet(tmp_path / "bad", shared(
        {"name": "gps", "driver": "nmea", "port": "/dev/ttyUSB0"}), {
        "edge-a": {"devices": [{"name": "gps-2", "driver": "nmea", "port": "/dev/ttyUSB0"}]}})
    code, _, err = check(capsys, str(root))
    assert code == 2
    assert "nodes/edge-a.yaml: devices[0].port: '/dev/ttyUSB0' is already used by device " \
           "'gps'" in err


BAD_FLEETS = [
    ("pattern-not-a-string",
     shared(modbus("gw-1", "tcp://192.0.2.10:502", nodes=["edge-a", 3])), {},
     "config.yaml: devices[0].nodes[1]: 3 is not a string"),
    ("patterns-not-a-list",
     shared(modbus("gw-1", "tcp://192.0.2.10:502", nodes="edge-a")), {},
     "config.yaml: devices[0].nodes: must be a list of node name patterns"),
    ("empty-patterns",
     shared(modbus("gw-1", "tcp://192.0.2.10:502", nodes=[])), {},
     "config.yaml: devices[0].nodes: an empty list runs the device on no node"),
    ("defined-twice",
     shared(modbus("meter", "tcp://192.0.2.10:502")),
     {"edge-a": {"devices": [modbus("meter", "tcp://192.0.2.12:502")]}},
     "nodes/edge-a.yaml: devices[0].name: device 'meter' is defined twice for node 'edge-a': "
     "in config.yaml (devices[0]) and in nodes/edge-a.yaml (devices[0])"),
    ("not-yaml", shared(), {"edge-a": "devices: [name: x\n  - {"},
     "nodes/edge-a.yaml: line 2 column 5: invalid YAML"),
    ("node-file-with-settings", shared(), {"edge-a": {"mqtt": {"qos": 0}, "devices": []}},
     "nodes/edge-a.yaml: mqtt: a per-node file holds `devices:` only"),
    ("node-file-device-error", shared(),
     {"edge-a": {"devices": [modbus("m", "tcp://192.0.2.10:502", unit=300)]}},
     "nodes/edge-a.yaml: devices[0].unit:"),
    ("shared-settings-error", {**shared(), "mqtt": {"qos": 7}}, {},
     "config.yaml: mqtt.qos: 7 is not one of 0, 1, 2"),
    ("glob-only-device-error",
     shared(modbus("m", "tcp://192.0.2.10:502", nodes=["line-*"], unit=300)), {},
     "config.yaml: devices[0].unit:"),
]


@pytest.mark.parametrize(("shared_data", "nodes", "expected"),
                         [case[1:] for case in BAD_FLEETS], ids=[c[0] for c in BAD_FLEETS])
def test_a_bad_fleet_config_exits_2_naming_the_file_and_the_field(
        tmp_path, capsys, shared_data, nodes, expected):
    root = write_fleet(tmp_path / "fleet", shared_data, nodes)
    code, out, err = check(capsys, str(root))
    assert code == 2
    assert expected in err, err
    assert "Traceback" not in out + err


def test_run_refuses_a_bad_node_file_of_its_own_node_but_not_of_another(tmp_path):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": "devices: [\n"})
    with pytest.raises(ConfigError, match=r"nodes/edge-b\.yaml: line"):
        fleet.load_node(root, "edge-b")
    assert [d.name for d in fleet.load_node(root, "edge-a").config.devices] == [
        "gw-1", "everywhere"]


def test_a_node_file_in_both_layouts_and_an_unknown_yaml_file_are_errors(tmp_path, capsys):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B})
    write_fleet(root, FLEET, {"edge-b": NODE_B}, flat=True)
    (root / "node__edge-c.yaml").write_text("devices: []\n")
    code, _, err = check(capsys, str(root))
    assert code == 2
    assert "node 'edge-b' also has" in err
    assert "node__edge-c.yaml: not a file of a config directory" in err


def test_a_directory_without_config_yaml_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = check(capsys, str(tmp_path / "empty"))
    assert code == 2 and "no config.yaml in this directory" in err


def test_an_agent_given_a_fleet_config_keeps_only_its_own_devices(monkeypatch):
    from edge_agent import config as config_mod

    monkeypatch.setenv("NODE_NAME", "line-3-2")
    agent = Agent(config_mod.validate(FLEET))
    assert [d.name for d in agent.config.devices] == ["usb-meter", "everywhere"]


def test_node_files_beside_a_config_file_named_by_c_are_reported_as_ignored(tmp_path):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B}, flat=True)
    assert fleet.ignored_node_files(root / "config.yaml") == [root / "nodes__edge-b.yaml"]
    assert fleet.ignored_node_files(root) == []


def test_a_hash_changes_with_what_the_node_runs_not_with_where_else_a_device_runs(tmp_path):
    root = write_fleet(tmp_path / "fleet", FLEET)
    before = fleet.load_node(root, "edge-a").hash
    wider = shared(modbus("gw-1", "tcp://192.0.2.10:502", nodes=["edge-a", "edge-x"]),
                   *FLEET["devices"][1:])
    write_fleet(root, wider)
    assert fleet.load_node(root, "edge-a").hash == before
    changed = shared(modbus("gw-1", "tcp://192.0.2.10:502", 7, nodes=["edge-a"]),
                     *FLEET["devices"][1:])
    write_fleet(root, changed)
    assert fleet.load_node(root, "edge-a").hash != before


def test_the_node_name_env_override_of_node_is_honoured_without_reading_device_overrides(
        tmp_path):
    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B})
    environ = {"EDGE_AGENT_NODE": "edge-b", "EDGE_AGENT_DEVICES__1__UNIT": "6"}
    loaded = fleet.load_node(root, environ=environ)
    assert loaded.node == "edge-b"
    assert loaded.config.devices[1].name == "local-b" and loaded.config.devices[1].unit == 6


def test_a_change_between_loading_and_watching_is_noticed(tmp_path):
    """The watcher starts from the signature the config was read at, not from what it finds
    when it starts (a ConfigMap swap while a slow agent starts up is not missed)."""
    import asyncio

    from edge_agent.reload import ConfigWatcher

    root = write_fleet(tmp_path / "fleet", FLEET, {"edge-b": NODE_B})
    loaded = fleet.load_node(root, "edge-b")
    write_fleet(root, FLEET, {"edge-b": {"devices": [modbus("other", "/dev/ttyUSB1")]}})

    async def watch() -> None:
        changed = asyncio.Event()

        async def on_change() -> None:
            changed.set()

        watcher = ConfigWatcher(lambda: fleet.watched_paths(root, "edge-b"), on_change,
                                interval=0.01, read_at=lambda: loaded.signature)
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(changed.wait(), 5)
        finally:
            task.cancel()

    asyncio.run(watch())
