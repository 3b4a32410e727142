"""Hot reload of hostile files: a non-UTF-8 file, an empty or cut one, an alias bomb. Each is
refused and counted, the running devices keep running, and the watcher goes on to apply the
next valid file (issue #18, items 7-9)."""

from __future__ import annotations

import copy

import yaml

from tests.helpers import wait_until
from tests.inprocess import AgentThread, sample_value
from tests.test_config_source import ALIAS_BOMB


def test_hostile_files_are_refused_on_reload_and_the_next_valid_one_is_applied(
        tmp_path, mosquitto, simulators):
    config = simulators.agent_config(mosquitto.url, node="n1")
    config["devices"] = [d for d in config["devices"] if d["name"] == "boiler-1"]
    config["devices"][0]["interval"] = 0.1
    config["http"] = {"listen": "127.0.0.1:0"}  # as AgentThread runs it: no HTTP restart
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    thread = AgentThread(config, path, watch_interval=0.05).start()
    agent = thread.agent

    def polls() -> int:
        return thread.call(lambda: agent.supervisor.runners["boiler-1"].state.polls)

    try:
        wait_until(lambda: polls() > 2, what="boiler-1 polled")
        hostile = [
            (b"node: caf\xe9\n", "not UTF-8 text: byte 0xe9 at offset 9"),
            (b"", "the file is empty"),
            (b"mqtt:\n  url: " + config["mqtt"]["url"].encode() + b"\n", "no `devices:` key"),
            (ALIAS_BOMB.encode(), "alias bomb"),
            (b"devices: [{name: x, driver: modbus", "invalid YAML"),
        ]
        for failures, (content, reason) in enumerate(hostile, start=1):
            path.write_bytes(content)
            wait_until(lambda n=failures: agent.reload_stats["failures"] == n,
                       what=f"refusal {failures}")
            assert reason in agent.reload_stats["last_error"]
            assert thread.get("/healthz")[0] == 200
        before = polls()
        wait_until(lambda: polls() > before + 2, what="boiler-1 still polled")
        metrics = thread.metrics()
        assert sample_value(metrics, "edge_agent_config_reload_failures_total") == len(hostile)
        assert sample_value(metrics, "edge_agent_config_last_reload_success") == 0

        changed = copy.deepcopy(config)
        changed["devices"][0]["interval"] = 0.2
        path.write_text(yaml.safe_dump(changed))
        wait_until(lambda: agent.reload_stats["last_ok"] == 1, what="the valid file applied")
        assert thread.call(lambda: agent.config.devices[0].interval) == 0.2

        path.write_text("devices: []\n")  # stopping everything on purpose is allowed
        wait_until(lambda: not thread.call(lambda: list(agent.supervisor.runners)),
                   what="every device stopped on purpose")
        assert agent.reload_stats["failures"] == len(hostile)
    finally:
        thread.stop()
