"""The node's `offline` will belongs to one connection: it is built (with its timestamp) for
each connection the agent makes, not once per process."""

from __future__ import annotations

import signal

from edge_agent_simulators.broker import Mosquitto
from tests.helpers import Subscriber, wait_until


def test_the_offline_will_carries_the_time_of_its_own_connection(simulators, start_agent):
    broker = Mosquitto().start()
    try:
        agent = start_agent(simulators.agent_config(broker.url), env={"NODE_NAME": "n8"})
        sub = Subscriber(broker.port, "edge/n8/status")
        first = sub.wait_for("edge/n8/status", where=lambda m: m["state"] == "online")[0]
        sub.close()
        broker.stop()
        wait_until(lambda: any(line.get("event") == "mqtt_disconnected"
                               for line in agent.log_lines()), what="the agent notices")
        broker = Mosquitto(port=broker.port).start()
        sub = Subscriber(broker.port, "edge/n8/status")
        second = sub.wait_for("edge/n8/status", where=lambda m: m["state"] == "online")[0]
        agent.stop(signal.SIGKILL)  # the broker publishes the will of the second connection
        will = sub.wait_for("edge/n8/status", where=lambda m: m["state"] == "offline",
                            timeout=90)[0]
        sub.close()
        assert first["ts"] < will["ts"] <= second["ts"]
    finally:
        broker.stop()
