"""Hot reload: SIGHUP and a ConfigMap-style symlink swap apply only what changed."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import yaml

from edge_agent import config as config_mod
from edge_agent.reload import plan
from edge_agent_simulators.broker import free_port
from tests.helpers import wait_until
from tests.inprocess import sample_value, scrape


def _events(agent, event: str, **fields: object) -> list[dict]:
    return [line for line in agent.log_lines() if line.get("event") == event
            and all(line.get(k) == v for k, v in fields.items())]


def _base(simulators, mosquitto) -> dict:
    config = simulators.agent_config(mosquitto.url)
    for device in config["devices"]:
        device["interval"] = 0.1
    config["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    return config


def _only(config: dict, *names: str) -> dict:
    config = copy.deepcopy(config)
    config["devices"] = [d for d in config["devices"] if d["name"] in names]
    return config


def test_sighup_starts_added_stops_removed_and_restarts_only_changed_devices(
        mosquitto, subscriber, simulators, start_agent):
    full = _base(simulators, mosquitto)
    agent = start_agent(_only(full, "boiler-1"), env={"NODE_NAME": "n1"})
    subscriber.wait_for("n1/boiler-1/telemetry", count=2)

    # add meter-1; boiler-1 is unchanged and must keep running untouched
    agent.config_path.write_text(yaml.safe_dump(_only(full, "boiler-1", "meter-1")))
    agent.process.send_signal(signal.SIGHUP)
    subscriber.wait_for("n1/meter-1/telemetry", count=2)
    assert len(_events(agent, "device_connected", device="boiler-1")) == 1

    # remove meter-1, change boiler-1: only boiler-1 restarts; meter-1's status is cleared
    changed = _only(full, "boiler-1")
    changed["devices"][0]["interval"] = 0.2
    agent.config_path.write_text(yaml.safe_dump(changed))
    agent.process.send_signal(signal.SIGHUP)
    wait_until(lambda: b"" in subscriber.on("n1/meter-1/status"), what="retained status cleared")
    wait_until(lambda: len(_events(agent, "device_connected", device="boiler-1")) == 2,
               what="boiler-1 restarted")
    meter_count = len(subscriber.on("n1/meter-1/telemetry"))
    boiler_count = len(subscriber.on("n1/boiler-1/telemetry"))
    subscriber.wait_for("n1/boiler-1/telemetry", count=boiler_count + 3)
    assert len(subscriber.on("n1/meter-1/telemetry")) <= meter_count + 1  # at most in flight
    seqs = [m["seq"] for m in subscriber.json_on("n1/boiler-1/telemetry")]
    assert seqs == list(range(1, len(seqs) + 1))  # one seq series across the restart

    metrics = scrape(f"http://{changed['http']['listen']}/metrics")
    assert sample_value(metrics, "edge_agent_config_reloads_total") == 2
    assert sample_value(metrics, "edge_agent_config_reload_failures_total") == 0
    assert sample_value(metrics, "edge_agent_config_last_reload_success") == 1
    assert agent.stop() == 0


def test_an_invalid_config_keeps_the_running_one_logs_why_and_sets_a_metric(
        mosquitto, subscriber, simulators, start_agent):
    config = _only(_base(simulators, mosquitto), "boiler-1")
    agent = start_agent(config, env={"NODE_NAME": "n1"})
    subscriber.wait_for("n1/boiler-1/telemetry", count=2)

    broken = copy.deepcopy(config)
    broken["devices"][0]["points"][0]["type"] = "float33"
    agent.config_path.write_text(yaml.safe_dump(broken))
    agent.process.send_signal(signal.SIGHUP)
    failed = wait_until(lambda: _events(agent, "config_reload_failed"), what="refusal logged")
    assert any(p.startswith("devices[0].points[0].type: 'float33'")
               for p in failed[0]["problems"])
    count = len(subscriber.on("n1/boiler-1/telemetry"))
    subscriber.wait_for("n1/boiler-1/telemetry", count=count + 3)  # still running
    url = f"http://{config['http']['listen']}/metrics"
    metrics = scrape(url)
    assert sample_value(metrics, "edge_agent_config_reload_failures_total") == 1
    assert sample_value(metrics, "edge_agent_config_last_reload_success") == 0
    assert len(_events(agent, "device_connected", device="boiler-1")) == 1

    agent.config_path.write_text("devices: [")  # not even YAML
    agent.process.send_signal(signal.SIGHUP)
    wait_until(lambda: len(_events(agent, "config_reload_failed")) == 2, what="second refusal")
    assert "invalid YAML" in _events(agent, "config_reload_failed")[1]["problems"][0]
    assert agent.stop() == 0


def test_configmap_symlink_swap_is_picked_up_and_mqtt_settings_reconnect(
        mosquitto, simulators, start_agent, tmp_path):
    from tests.helpers import Subscriber

    config = _only(_base(simulators, mosquitto), "boiler-1")
    mount = tmp_path / "configmap"
    _configmap_update(mount, "v1", config)
    config_file = mount / "config.yaml"
    config_file.symlink_to("..data/config.yaml")

    agent = start_agent(config, env={"NODE_NAME": "n1"})
    agent.process.kill()  # restart it on the mounted file instead of the helper's copy
    agent.process.wait()
    agent.config_path = config_file
    agent.start()
    watcher = Subscriber(mosquitto.port, ["edge/n1/#", "plant/n1/#"])
    try:
        watcher.wait_for("edge/n1/boiler-1/telemetry", count=2)
        moved = copy.deepcopy(config)
        moved["mqtt"]["topic_prefix"] = "plant"
        _configmap_update(mount, "v2", moved)  # what the kubelet does: swap ..data
        watcher.wait_for("plant/n1/boiler-1/telemetry", count=2, timeout=15)
        assert watcher.wait_for("plant/n1/status", where=lambda m: m["state"] == "online")
        assert watcher.wait_for("edge/n1/status", where=lambda m: m["state"] == "offline")
        reloaded = _events(agent, "config_reloaded")
        assert reloaded and reloaded[0]["reason"] == "file changed"
        assert reloaded[0]["mqtt_reconnect"] is True
    finally:
        watcher.close()
    assert agent.stop() == 0


def _configmap_update(mount: Path, version: str, config: dict) -> None:
    """Writes a new timestamped directory and atomically repoints ..data at it."""
    mount.mkdir(exist_ok=True)
    (mount / f"..{version}").mkdir()
    (mount / f"..{version}" / "config.yaml").write_text(yaml.safe_dump(config))
    os.symlink(f"..{version}", mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")


def _config(**top: object) -> config_mod.AgentConfig:
    devices = [{"name": n, "driver": "modbus", "port": "tcp://127.0.0.1:1",
                "points": [{"name": "x", "address": 0}]} for n in ("a", "b", "c")]
    return config_mod.validate({"devices": devices, **top}, environ={})


def test_plan_touches_only_what_changed(monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)
    old = _config()
    assert plan(old, _config()).summary() == {}

    new = _config()
    new.devices[1] = new.devices[1].model_copy(update={"interval": 5.0})
    new.devices.pop(2)
    changes = plan(old, new)
    assert (changes.restart, changes.stop, changes.start) == (["b"], ["c"], [])
    assert not changes.mqtt and not changes.http

    changes = plan(old, _config(mqtt={"url": "mqtt://elsewhere:1883"}, http={"listen": ":1"}))
    assert changes.mqtt and changes.http and not changes.restart

    changes = plan(old, _config(node="renamed"))  # new topics for every device
    assert changes.mqtt and changes.restart == ["a", "b", "c"]

    changes = plan(old, _config(buffer={"max_bytes": 1 << 20}))
    assert changes.needs_restart == ["buffer"]
