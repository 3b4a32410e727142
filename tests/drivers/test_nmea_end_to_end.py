"""The NMEA driver against the simulated receiver on a real pty, in process and through MQTT."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.errors import DeviceDisconnected
from edge_agent_drivers.nmea.config import NmeaDevice
from edge_agent_drivers.nmea.driver import KNOTS_TO_METRES_PER_SECOND, NmeaDriver
from edge_agent_simulators.nmea import NmeaDevice as SimulatedReceiver
from edge_agent_simulators.nmea import NmeaReceiver
from tests.helpers import SimulatorThread, wait_until

FAULTS = {"bad_checksum": 0.15, "truncated": 0.08, "noise": 0.08}


def assert_matches_truth(values: dict[str, float], truth: dict[str, float]) -> None:
    """Every value published equals what the receiver sent for that epoch: none is corrupt."""
    for metric in ("latitude", "longitude", "altitude", "speed", "course"):
        if metric in values:
            assert values[metric] == pytest.approx(truth[metric], abs=1e-9), metric
    if "satellites" in values:
        assert values["satellites"] == truth["satellites"]


def test_driver_yields_one_true_sample_per_epoch_and_counts_every_fault_kind():
    async def scenario() -> tuple[list, NmeaDriver, NmeaReceiver, Exception | None]:
        receiver = NmeaReceiver(faults=FAULTS, seed=5)
        device = SimulatedReceiver(receiver, rate=25)
        driver = NmeaDriver(NmeaDevice(name="gps", driver="nmea", port=device.path,
                                       epoch_gap=0.02))
        await driver.connect()
        samples, failure = [], None
        try:
            async for sample in driver.stream():
                samples.append(sample)
                if len(samples) == 60:
                    device.close()  # the receiver is unplugged: the stream must end cleanly
        except DeviceDisconnected as exc:
            failure = exc
        await driver.close()
        return samples, driver, receiver, failure

    samples, driver, receiver, failure = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert isinstance(failure, DeviceDisconnected)
    checked = 0
    for sample in samples:
        values = {r.metric: r.value for r in sample.readings}
        assert all(r.quality == "good" for r in sample.readings)
        if "speed" in values:
            values["speed"] *= KNOTS_TO_METRES_PER_SECOND
        if "gnss_time" in values:
            assert_matches_truth(values, receiver.truth[values["gnss_time"]])
            checked += 1
    assert checked >= 40
    # one sample per epoch: no epoch's GNSS time shows up twice
    times = [r.value for s in samples for r in s.readings if r.metric == "gnss_time"]
    assert len(times) == len(set(times))
    for kind in ("checksum", "truncated", "noise"):
        assert driver.counters[kind] > 0, kind
    # every flipped character was caught, none slipped through as a good sentence
    assert driver.counters["checksum"] <= receiver.injected["bad_checksum"]
    assert driver.counters["checksum"] >= receiver.injected["bad_checksum"] - 6


def test_positions_reach_mqtt_in_degrees_metres_and_metres_per_second_despite_faults(
        mosquitto, subscriber, start_agent):
    sims = SimulatorThread({"devices": [{"name": "gps-1", "kind": "nmea", "rate": 10,
                                         "speed": 15.0, "faults": FAULTS}]})
    try:
        config = sims.agent_config(mosquitto.url, node="n1")
        config["devices"][0]["epoch_gap"] = 0.03
        agent = start_agent(config)
        messages = subscriber.wait_for("n1/gps-1/telemetry", count=25, timeout=20)
        receiver = sims.by_name("gps-1").handle.receiver
        truths = sims.call(lambda: dict(receiver.truth))
        checked = 0
        for message in messages:
            readings = {r["metric"]: r for r in message["readings"]}
            units = {m: r.get("unit") for m, r in readings.items()}
            assert {k: v for k, v in units.items() if k in (
                "latitude", "longitude", "altitude", "speed", "course")} == {
                k: u for k, u in {"latitude": "deg", "longitude": "deg", "altitude": "m",
                                  "speed": "m/s", "course": "deg"}.items() if k in readings}
            values = {m: r["value"] for m, r in readings.items()}
            if "gnss_time" in values and values["gnss_time"] in truths:
                assert_matches_truth(values, truths[values["gnss_time"]])
                assert values["speed"] == pytest.approx(15.0, abs=1e-3)
                checked += 1
        assert checked >= 15
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))

        def dropped_kinds() -> set[str]:
            return {line.get("kind") for line in agent.log_lines()
                    if line.get("event") == "nmea_sentence_dropped"}
        wait_until(lambda: {"checksum", "truncated", "noise"} <= dropped_kinds(),
                   what="each fault kind logged")
        assert agent.stop() == 0
    finally:
        sims.close()


def test_dropped_sentences_are_counted_by_kind_in_metrics(mosquitto):
    from tests.inprocess import AgentThread, sample_value

    sims = SimulatorThread({"devices": [{"name": "gps-1", "kind": "nmea", "rate": 20,
                                         "faults": {"bad_checksum": 0.3}}]})
    agent = None
    try:
        agent = AgentThread(sims.agent_config(mosquitto.url, node="n3")).start()

        def checksum_errors() -> float:
            return sample_value(agent.metrics(), "edge_agent_read_errors_total",
                                device="gps-1", kind="checksum") or 0
        wait_until(lambda: checksum_errors() >= 3, timeout=20, what="checksum errors in /metrics")
        runners = agent.agent.supervisor.runners
        counted = agent.call(lambda: runners["gps-1"].driver.counters["checksum"])
        assert counted >= checksum_errors() >= 3  # one counter, read at scrape time
    finally:
        if agent is not None:
            agent.stop()
        sims.close()
