"""Configuration: the contract's error format, env overrides, identity, redaction."""

from __future__ import annotations

import socket

import pytest
import yaml

from edge_agent import cli, config
from edge_agent.identity import client_id, node_name
from tests.helpers import run_cli

POINT = {"name": "t", "table": "holding", "address": 0, "type": "int16"}
DEVICE = {"name": "boiler-1", "driver": "modbus", "port": "tcp://127.0.0.1:5020",
          "points": [POINT]}


def good() -> dict:
    return {"node": "edge-1", "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "devices": [dict(DEVICE, points=[dict(POINT)])]}


def with_(path: str, value) -> dict:
    """The good config with one key (dotted path, numbers index lists) set to `value`."""
    data = good()
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        index = int(last)
        if index == len(node):
            node.append(value)
        else:
            node[index] = value
    else:
        node[last] = value
    return data


_DELETE = object()

BAD_CONFIGS = [
    (with_("devices.0.points.0.type", "float33"),
     "devices[0].points[0].type: 'float33' is not one of bool, int16, uint16"),
    (with_("devices.0.points.0.table", "holdings"),
     "devices[0].points[0].table: 'holdings' is not one of holding, input, coil, discrete"),
    (with_("devices.0.points.0.order", "ABDC"), "devices[0].points[0].order: 'ABDC' is not one of"),
    (with_("devices.0.points.0.address", -1), "devices[0].points[0].address:"),
    (with_("devices.0.points.0.address", 70000), "devices[0].points[0].address:"),
    (with_("devices.0.points.0", dict(POINT, table="coil")),
     "devices[0].points[0]: table 'coil' holds single bits: type must be bool"),
    (with_("devices.0.points.0.name", "has space"), "devices[0].points[0].name:"),
    (with_("devices.0.points.0", {"name": "t"}), "devices[0].points[0].address: is required"),
    (with_("devices.0.points", []), "devices[0].points:"),
    (with_("devices.0.unit", 300), "devices[0].unit:"),
    (with_("devices.0.parity", "X"), "devices[0].parity: 'X' is not one of N, E, O"),
    (with_("devices.0.interval", 0), "devices[0].interval:"),
    (with_("devices.0.intervall", 1), "devices[0].intervall: unknown key"),
    (with_("devices.0.driver", "nosuchdriver"), "devices[0].driver: 'nosuchdriver' is not one of"),
    (with_("devices.0.name", "a/b"), "devices[0].name:"),
    (with_("devices.0.port", _DELETE), "devices[0].port: is required"),
    (with_("devices.1", dict(DEVICE)),
     "devices[1].name: device name 'boiler-1' is used twice (also devices[0])"),
    (with_("devices.1", {"name": "gps", "driver": "nmea", "port": "tcp://127.0.0.1:5020"}),
     "devices[1].port: 'tcp://127.0.0.1:5020' is already used by device 'boiler-1'"),
    (with_("mqtt.qos", 3), "mqtt.qos: 3 is not one of 0, 1, 2"),
    (with_("mqtt.url", "http://broker"), "mqtt.url:"),
    (with_("mqtt.format", "xml"), "mqtt.format: 'xml' is not one of json, sparkplug"),
    (with_("mqtt.tls", {"cert_file": "/c.pem"}), "mqtt.tls: cert_file and key_file"),
    (with_("mqtt.topic_prefix", "a/#"), "mqtt.topic_prefix:"),
    (with_("buffer.max_bytes", 10), "buffer.max_bytes:"),
    (with_("http.listen", "nonsense"), "http.listen: 'nonsense' is not host:port"),
    (with_("log_level", "loud"), "log_level: 'loud' is not one of debug, info"),
    (with_("mqtt.bogus", 1), "mqtt.bogus: unknown key"),
]


@pytest.mark.parametrize(("data", "expected"), BAD_CONFIGS,
                         ids=[e.split(":")[0] for _, e in BAD_CONFIGS])
def test_bad_config_exits_2_naming_the_field(tmp_path, capsys, data, expected):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err


def test_every_problem_is_listed_one_per_line(tmp_path, capsys):
    data = with_("devices.0.points.0.type", "float33")
    data["mqtt"]["qos"] = 7
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[1:] == ["mqtt.qos: 7 is not one of 0, 1, 2"] or (
        any(line.startswith("mqtt.qos") for line in lines))
    assert len(lines) == 2  # header + the core-level problem (drivers validate after the core)


@pytest.mark.parametrize(("text", "expected"), [
    ("devices: [\n", "invalid YAML"),
    ("- just\n- a list\n", "the top level must be a mapping"),
])
def test_unparseable_file_is_a_clear_error(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert cli.main(["check-config", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_missing_file_on_run_exits_2_without_traceback(tmp_path):
    result = run_cli("run", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_run_reads_config_path_from_env_when_no_flag(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(with_("mqtt.qos", 9)))
    result = run_cli("run", env={"EDGE_AGENT_CONFIG": str(path)})
    assert result.returncode == 2 and "mqtt.qos: 9" in result.stderr


def test_check_config_prints_resolved_config_with_secrets_redacted(tmp_path, capsys):
    data = good()
    data["mqtt"].update(username="agent", password_file="/run/secrets/pw")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["check-config", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["mqtt"]["password_file"] == "/run/secrets/pw"  # a path, not the secret
    assert printed["devices"][0]["points"][0]["type"] == "int16"  # driver keys resolved
    assert printed["devices"][0]["unit"] == 1  # driver defaults filled in


def test_modbus_units_may_share_one_port():
    data = good()
    data["devices"].append(dict(DEVICE, name="boiler-2", unit=2, points=[dict(POINT)]))
    resolved = config.validate(data, environ={})
    assert [d.unit for d in resolved.devices] == [1, 2]


def test_env_overrides_scalars_at_any_depth_including_list_items():
    env = {"EDGE_AGENT_MQTT__URL": "mqtts://broker:8883", "EDGE_AGENT_MQTT__QOS": "2",
           "EDGE_AGENT_DEVICES__0__INTERVAL": "0.5",
           "EDGE_AGENT_DEVICES__0__POINTS__0__SCALE": "0.1",
           "EDGE_AGENT_CONFIG": "/not/a/key", "EDGE_AGENT_TOOLS_VENV": "/opt/tools",
           "EDGE_AGENT_BIN": "/opt/venv/bin/edge-agent"}
    resolved = config.validate(good(), environ=env)
    assert resolved.mqtt.url == "mqtts://broker:8883"
    assert resolved.mqtt.qos == 2
    assert resolved.devices[0].interval == 0.5
    assert resolved.devices[0].points[0].scale == 0.1


def test_env_override_of_missing_list_item_is_a_config_error():
    with pytest.raises(config.ConfigError, match="EDGE_AGENT_DEVICES__5__PORT"):
        config.validate(good(), environ={"EDGE_AGENT_DEVICES__5__PORT": "x"})


def test_node_name_prefers_env_then_config_then_hostname(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "k8s-node-3")
    assert node_name("configured") == "k8s-node-3"
    monkeypatch.delenv("NODE_NAME")
    assert node_name("configured") == "configured"
    assert node_name(None) == socket.gethostname().replace("/", "_")


def test_node_name_replaces_characters_mqtt_forbids_in_a_level(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "a/b+c#d")
    # `_` in the topic level, as the contract says; the client id keeps a/b, a+b, a_b apart
    assert node_name(None) == "a_b_c_d"
    assert client_id(None) == "edge-agent-a_b_c_d~sph"
    monkeypatch.setenv("NODE_NAME", "a_b_c_d")
    assert client_id(None) == "edge-agent-a_b_c_d"


def test_equal_points_of_different_devices_share_one_model_and_only_equal_ones():
    # 247 units of one map would hold 247 copies of each point (edge_agent.device_config)
    def unit(name: str, **extra) -> dict:
        return {"name": name, "driver": "modbus", "port": "tcp://127.0.0.1:5020", "points": [
            {"name": "a", "address": 0}, {"name": "b", "address": 1, **extra}]}
    devices = [unit("u1"), unit("u2"), unit("u3", scale=1), unit("u4", scale=1.0),
               unit("u5", invalid=[65535]), unit("u6", invalid=[65535]),
               unit("u7", writable=True), unit("u8", writable=1)]
    loaded = config.validate({"devices": devices}, environ={})
    points = {d.name: d.points for d in loaded.devices}
    assert points["u1"][0] is points["u2"][0] is points["u8"][0]
    assert points["u1"][1] is points["u2"][1]
    assert points["u3"][1] is not points["u1"][1]  # `scale` given: another fields set
    assert points["u3"][1] is points["u4"][1]  # 1 and 1.0 are both the float 1.0 here
    assert points["u5"][1] is not points["u6"][1]  # a list: each keeps its own
    assert points["u7"][1] is points["u8"][1] and points["u7"][1].writable is True
    assert [p.model_dump() for p in points["u5"]] == [p.model_dump() for p in points["u6"]]
