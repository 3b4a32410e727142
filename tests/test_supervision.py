"""What the core enforces on every driver, whatever the driver does (issue #18, item 14):

- a poll that hangs is cut at the core's time limit: counted as a timeout, the device shown in
  error and reconnected;
- a stream that falls silent for `stale_after` is reconnected (status error, `stale`), and a
  stream that ends is a disconnect, not a silent stop;
- a failure to publish a driver's readings is the core's: counted as a dropped sample of the
  device (`publish_failed`), never as a driver crash, and the device carries on;
- a burst beyond `max_rate` is coalesced: every sample is either published or counted, and the
  latest value of every metric is published.

The drivers are third-party-style classes (tests/supervision_drivers.py) found through an
entry point of an installed distribution, like any driver package; the agent runs in-process
against a real Mosquitto.
"""

from __future__ import annotations

import pytest

from edge_agent.driver import POLL_LIMIT_TIMEOUTS
from tests import supervision_drivers
from tests.helpers import Subscriber, wait_until
from tests.inprocess import AgentThread, sample_value


@pytest.fixture
def drivers_installed(tmp_path, monkeypatch):
    site = supervision_drivers.register(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    return site


def run_device(mosquitto, node: str, device: dict) -> AgentThread:
    config = {"node": node, "mqtt": {"url": mosquitto.url}, "devices": [device]}
    return AgentThread(config).start()


def runner_of(agent: AgentThread, name: str):
    return agent.agent.supervisor.runners[name]


def statuses(subscriber: Subscriber, device: str) -> list[dict]:
    return subscriber.json_on(f"/{device}/status")


def test_a_poll_that_hangs_is_cut_at_the_core_limit_counted_and_reconnected(
        drivers_installed, mosquitto):
    watcher = Subscriber(mosquitto.port, "edge/hang/#")
    device = {"name": "stuck", "driver": "test-hanging-poll", "interval": 0.1, "timeout": 0.05}
    agent = run_device(mosquitto, "hang", device)
    try:
        runner = runner_of(agent, "stuck")
        # two hung polls: each one cut, counted, and the device connected again afterwards
        wait_until(lambda: agent.call(lambda: runner.driver.connects) >= 3, timeout=20,
                   what="two reconnects after hung polls")
        limit = 0.1 + POLL_LIMIT_TIMEOUTS * 0.05
        errors = agent.call(lambda: dict(runner.state.errors))
        assert errors["timeout"] >= 2
        assert errors.get("internal", 0) == 0  # not a driver crash
        assert runner.driver.hangs >= 2
        error = watcher.wait_for("/stuck/status", where=lambda m: m["state"] == "error")[0]
        assert error["error"] == f"poll did not finish within {limit:g} s (the core's limit)"
        # after each cut the device is connected again and polls again
        watcher.wait_for("/stuck/telemetry", count=2,
                         where=lambda m: m["readings"][0]["value"] >= 2)
        assert sample_value(agent.metrics(), "edge_agent_read_errors_total", device="stuck",
                            kind="timeout") >= 2
    finally:
        agent.stop()
        watcher.close()


def test_a_driver_stuck_in_its_thread_fails_as_timeouts_and_never_holds_up_a_stop(
        drivers_installed, mosquitto):
    device = {"name": "blocked", "driver": "test-stuck-thread", "interval": 0.1,
              "timeout": 0.05}
    agent = run_device(mosquitto, "stuck", device)
    try:
        runner = runner_of(agent, "blocked")
        # the poll is cut; then close and connect, queued behind the stuck thread, are cut too
        wait_until(lambda: agent.call(lambda: runner.state.errors["timeout"]) >= 3,
                   timeout=20, what="repeated timeouts")
        assert agent.call(lambda: runner.status) == "error"
        assert runner.driver.polls == 1  # the stuck read was never piled onto
        agent.stop()  # returns although the driver's thread is still stuck
        assert not agent.thread.is_alive()
    finally:
        supervision_drivers.RELEASE.set()
        agent.stop()


def test_a_silent_stream_goes_stale_and_is_reconnected(drivers_installed, mosquitto):
    watcher = Subscriber(mosquitto.port, "edge/quiet/#")
    device = {"name": "gnss", "driver": "test-silent-stream", "stale_after": 0.3}
    agent = run_device(mosquitto, "quiet", device)
    try:
        runner = runner_of(agent, "gnss")
        wait_until(lambda: agent.call(lambda: runner.driver.connects) >= 3, timeout=20,
                   what="reconnects of a stale stream")
        stale = watcher.wait_for("/gnss/status", where=lambda m: m["state"] == "error")[0]
        assert stale["error"] == "stale: no data for 0.3 s"
        assert agent.call(lambda: runner.state.errors["stale"]) >= 2
        # every connect streamed its two samples: nothing was lost to the watchdog
        values = [m["readings"][0]["value"] for m in watcher.json_on("/gnss/telemetry")]
        assert values[:4] == [0, 1, 0, 1]
    finally:
        agent.stop()
        watcher.close()


def test_the_default_staleness_limit_follows_the_interval():
    from edge_agent.config import DeviceConfig
    from edge_agent.supervision.device import stale_limit

    def limit(**keys) -> float:
        return stale_limit(DeviceConfig(name="d", driver="x", **keys))

    assert limit() == 10.0  # 10 intervals of 1 s
    assert limit(interval=0.05) == 10.0  # never less than 10 s
    assert limit(interval=5) == 50.0
    assert limit(stale_after=0) == 0  # off: a device that speaks only on events
    assert limit(stale_after=2.5) == 2.5


def test_a_stream_that_ends_is_a_disconnect(drivers_installed, mosquitto):
    watcher = Subscriber(mosquitto.port, "edge/ends/#")
    device = {"name": "once", "driver": "test-ending-stream"}
    agent = run_device(mosquitto, "ends", device)
    try:
        runner = runner_of(agent, "once")
        wait_until(lambda: agent.call(lambda: runner.driver.connects) >= 3, timeout=20,
                   what="reconnects of an ended stream")
        gone = watcher.wait_for("/once/status", where=lambda m: m["state"] == "disconnected"
                                and m.get("error"))[0]
        assert gone["error"] == "the stream ended"
        assert agent.call(lambda: runner.state.errors["disconnected"]) >= 2
        assert agent.call(lambda: runner.state.errors.get("internal", 0)) == 0
    finally:
        agent.stop()
        watcher.close()


def test_a_failure_to_publish_is_counted_for_the_device_not_blamed_on_the_driver(
        drivers_installed, mosquitto):
    watcher = Subscriber(mosquitto.port, "edge/enc/#")
    device = {"name": "odd", "driver": "test-unencodable", "interval": 0.05}
    agent = run_device(mosquitto, "enc", device)
    try:
        runner = runner_of(agent, "odd")
        wait_until(lambda: agent.call(lambda: runner.state.dropped["publish_failed"]) >= 3,
                   timeout=20, what="three failed publishes")
        messages = watcher.wait_for("/odd/telemetry", count=4)
        values = [m["readings"][0]["value"] for m in messages]
        assert all(value % 3 for value in values)  # the others were all published
        assert agent.call(lambda: runner.driver.connects) == 1  # never reconnected
        assert agent.call(lambda: runner.status) == "connected"
        assert agent.call(lambda: runner.state.errors.get("internal", 0)) == 0
        assert sample_value(agent.metrics(), "edge_agent_samples_dropped_total", device="odd",
                            reason="publish_failed") >= 3
    finally:
        agent.stop()
        watcher.close()


def test_a_burst_beyond_max_rate_is_coalesced_and_counted_latest_values_kept(
        drivers_installed, mosquitto):
    watcher = Subscriber(mosquitto.port, "edge/burst/#")
    burst = 5000
    device = {"name": "chatty", "driver": "test-burst", "burst": burst, "max_rate": 20,
              "stale_after": 0}
    agent = run_device(mosquitto, "burst", device)
    try:
        runner = runner_of(agent, "chatty")
        last = burst - 1

        def latest() -> dict:
            values: dict = {}
            for message in watcher.json_on("/chatty/telemetry"):
                values.update({r["metric"]: r["value"] for r in message["readings"]})
            return values

        # the burst's last values of every metric arrive (the pending sample is released by
        # the rate limit's timer once the device has fallen silent)
        wait_until(lambda: latest().get("value") == last, timeout=20, what="the last value")
        expected = {"value": last, **{f"only_{k}": max(n for n in range(burst) if n % 7 == k)
                                      for k in range(7)}}
        assert latest() == expected
        published = len(watcher.json_on("/chatty/telemetry"))
        coalesced = agent.call(lambda: runner.gate.coalesced)
        assert published + coalesced == burst  # each sample: its own message, or merged
        assert published < burst / 10  # the bucket held them back
        assert sample_value(agent.metrics(), "edge_agent_samples_dropped_total",
                            device="chatty", reason="rate") == coalesced
        assert agent.call(lambda: runner.status) == "connected"
    finally:
        agent.stop()
        watcher.close()


def test_nothing_reaches_the_console_as_a_raw_traceback(drivers_installed, mosquitto,
                                                        subscriber, start_agent):
    """A driver that crashes, orphans a failing task, raises in a loop callback and in a
    thread of its own, beside one whose readings cannot be published: every line the agent
    prints (stdout and stderr) is a JSON event (issue #18, item 13)."""
    from tests.test_third_party_driver import with_path

    devices = [{"name": "buggy", "driver": "test-crashing", "interval": 0.1},
               {"name": "odd", "driver": "test-unencodable", "interval": 0.1}]
    agent = start_agent({"node": "tb", "mqtt": {"url": mosquitto.url},
                         "http": {"enabled": False}, "devices": devices},
                        env=with_path(drivers_installed))

    def events() -> set[str]:
        return {line.get("event") for line in agent.log_lines()}

    wanted = {"driver_crashed", "loop_error", "thread_crashed", "publish_failed"}
    wait_until(lambda: wanted <= events(), timeout=30, what=f"the events {wanted}")
    assert agent.stop() == 0
    lines = agent.log_lines()
    assert [line["raw"] for line in lines if "raw" in line] == []
    by_event = {line["event"]: line for line in lines}
    assert by_event["driver_crashed"]["device"] == "buggy"
    assert "a bug in the driver's poll" in by_event["driver_crashed"]["error"]
    assert by_event["publish_failed"]["device"] == "odd"
    loop_errors = [line for line in lines if line.get("event") == "loop_error"]
    assert any("an orphaned task failed" in line.get("error", "") for line in loop_errors)
    assert any("a loop callback failed" in line.get("error", "") for line in loop_errors)
    assert "a driver thread failed" in by_event["thread_crashed"]["error"]
