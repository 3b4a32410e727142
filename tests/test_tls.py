"""TLS, mutual TLS and password auth against a real Mosquitto with certificates made here."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent_simulators.broker import Mosquitto, free_port, wait_for_port
from tests.certs import Pki, make_ca, make_pki
from tests.delivery_support import ROOT_OK, agent_config, events, modbus_devices
from tests.helpers import SimulatorThread, Subscriber, wait_until

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def sims() -> Iterator[SimulatorThread]:
    sims = SimulatorThread(modbus_devices(1, interval=0.1))
    yield sims
    sims.close()


def tls_broker(pki: Pki, tmp_path: Path, mutual: bool = False, password: bool = False
               ) -> tuple[Mosquitto, int]:
    """A TLS listener for the agent and a plain anonymous one for the test's subscriber."""
    plain = free_port()
    broker = Mosquitto()
    lines = ["per_listener_settings true", ROOT_OK, "persistence false", "log_dest none",
             f"listener {broker.port} 127.0.0.1", f"cafile {pki.ca}",
             f"certfile {pki.server_cert}", f"keyfile {pki.server_key}"]
    if mutual:
        lines.append("require_certificate true")
    if password:
        passwords = tmp_path / "passwords"
        passwords.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), "agent", PASSWORD],
                       check=True, capture_output=True)
        lines += [f"password_file {passwords}", "allow_anonymous false"]
    else:
        lines.append("allow_anonymous true")
    lines += [f"listener {plain} 127.0.0.1", "allow_anonymous true"]
    broker.conf.write_text("\n".join(lines) + "\n")
    broker.start()  # waits for the TLS listener only
    wait_for_port(plain)  # the subscriber's listener may open a moment later
    return broker, plain


def tls_url(broker: Mosquitto) -> str:
    return f"mqtts://127.0.0.1:{broker.port}"


def test_tls_with_a_ca_file_delivers_telemetry(pki, tmp_path, sims, start_agent):
    broker, plain = tls_broker(pki, tmp_path)
    try:
        sub = Subscriber(plain, "edge/+/+/telemetry")
        config = agent_config(sims, tls_url(broker), None, tls={"ca_file": str(pki.ca)})
        agent = start_agent(config, env={"NODE_NAME": "tls"})
        assert [m["seq"] for m in sub.wait_for("tls/dev-0/telemetry", 3)][:3] == [1, 2, 3]
        assert events(agent, "mqtt_connected")[0]["url"] == tls_url(broker)
        assert agent.stop() == 0
        sub.close()
    finally:
        broker.stop()


def test_mutual_tls_with_client_certificate_and_password(pki, tmp_path, sims, start_agent):
    broker, plain = tls_broker(pki, tmp_path, mutual=True, password=True)
    try:
        sub = Subscriber(plain, "edge/+/+/telemetry")
        password_file = tmp_path / "password"
        password_file.write_text(PASSWORD + "\n")
        config = agent_config(sims, tls_url(broker), None, username="agent",
                              password_file=str(password_file),
                              tls={"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                                   "key_file": str(pki.client_key)})
        agent = start_agent(config, env={"NODE_NAME": "mtls"})
        sub.wait_for("mtls/dev-0/telemetry", 3)
        assert agent.stop() == 0
        assert PASSWORD not in agent.log_path.read_text()
        sub.close()
    finally:
        broker.stop()


def test_mutual_tls_without_client_certificate_is_refused_with_a_tls_error(
        pki, tmp_path, sims, start_agent):
    broker, _ = tls_broker(pki, tmp_path, mutual=True)
    try:
        config = agent_config(sims, tls_url(broker), None, tls={"ca_file": str(pki.ca)})
        agent = start_agent({**config, "shutdown_grace": 0.5})
        wait_until(lambda: len(events(agent, "mqtt_connect_failed")) >= 2,
                   what="two failed connects")
        failure = events(agent, "mqtt_connect_failed")[0]
        assert failure["error"].startswith("TLS failure: the broker requires a client "
                                           "certificate"), failure
        assert agent.process.poll() is None
        assert agent.stop() == 0
    finally:
        broker.stop()


def test_wrong_ca_fails_with_a_clear_error_and_keeps_retrying(pki, tmp_path, sims, start_agent):
    broker, _ = tls_broker(pki, tmp_path)
    other_ca = make_ca(tmp_path / "other", "someone-else")
    try:
        config = agent_config(sims, tls_url(broker), None, tls={"ca_file": str(other_ca)})
        agent = start_agent({**config, "shutdown_grace": 0.5})
        wait_until(lambda: len(events(agent, "mqtt_connect_failed")) >= 3,
                   what="three failed connects")
        failures = events(agent, "mqtt_connect_failed")
        assert failures[0]["error"].startswith("TLS failure: certificate verify failed")
        assert "mqtt.tls.ca_file" in failures[0]["error"]
        assert agent.process.poll() is None  # still running, still retrying
        assert agent.stop() == 0
    finally:
        broker.stop()


def test_wrong_password_fails_with_a_clear_error_and_keeps_retrying(
        pki, tmp_path, sims, start_agent):
    broker, _ = tls_broker(pki, tmp_path, password=True)
    password_file = tmp_path / "password"
    password_file.write_text("not-the-password\n")
    try:
        config = agent_config(sims, tls_url(broker), None, username="agent",
                              password_file=str(password_file), tls={"ca_file": str(pki.ca)})
        agent = start_agent({**config, "shutdown_grace": 0.5})
        wait_until(lambda: len(events(agent, "mqtt_connect_failed")) >= 3,
                   what="three failed connects")
        failure = events(agent, "mqtt_connect_failed")[0]
        assert failure["error"].startswith("authentication failed"), failure
        assert "mqtt.password_file" in failure["error"]
        assert "not-the-password" not in agent.log_path.read_text()
        assert agent.process.poll() is None
        assert agent.stop() == 0
    finally:
        broker.stop()
