"""NodeIdentity's rules: which signs mean another agent uses this node name, the back-off
while they do, and the all-clear. (End to end, with two agents and Mosquitto, in
test_fleet.py; Mosquitto 2.0 closes a taken-over MQTT 5 connection without the 0x8E
DISCONNECT, so that sign is pinned here.)"""

from __future__ import annotations

import asyncio
import json

from edge_agent.conflict import CONFLICT_INITIAL_DELAY, SESSION_TAKEN_OVER, NodeIdentity

BROKER = "mqtt://127.0.0.1:1883"


def status(instance: str, state: str = "online") -> bytes:
    return json.dumps({"state": state, "instance": instance, "ts": 1}).encode()


def test_a_previous_pods_retained_status_on_the_first_connection_is_no_conflict():
    identity = NodeIdentity("edge-a", 30.0)
    identity.session_started(BROKER)
    identity.status_seen(status("old-pod", "offline"), retained=True)
    identity.status_seen(status(identity.instance), retained=False)  # its own echo
    assert identity.conflict is None
    assert identity.session_ended(None) is None  # an ordinary loss: reconnect at once


def test_another_instance_on_the_topic_after_this_process_announced_itself_is_a_conflict():
    identity = NodeIdentity("edge-a", 30.0)
    identity.session_started(BROKER)
    identity.session_ended(None)
    identity.session_started(BROKER)  # reconnected: the retained status must be its own
    identity.status_seen(status(identity.instance, "offline"), retained=True)
    assert identity.conflict is None
    identity.status_seen(status("other", "offline"), retained=True)
    assert identity.conflict and "edge-a" in identity.conflict and "other" in identity.conflict
    assert identity.other == "other"
    assert identity.status_fields()["conflict"] == identity.conflict


def test_after_a_failover_the_other_brokers_old_status_is_not_a_conflict():
    identity = NodeIdentity("edge-a", 30.0)
    identity.session_started(BROKER)
    identity.session_ended(None)
    identity.session_started("mqtt://backup:1883")
    identity.status_seen(status("old-pod", "offline"), retained=True)
    assert identity.conflict is None


def test_a_live_status_of_another_instance_is_a_conflict_at_once():
    identity = NodeIdentity("edge-a", 30.0)
    identity.session_started(BROKER)
    identity.status_seen(status("other"), retained=False)
    assert identity.conflict is not None


def test_payloads_that_are_not_an_agents_status_are_ignored():
    identity = NodeIdentity("edge-a", 30.0)
    identity.session_started(BROKER)
    identity.session_ended(None)
    identity.session_started(BROKER)
    huge = b'{"state": "online", "instance": "other", "pad": "' + b"x" * 300_000 + b'"}'
    for payload in (b"", b"not json", b"[1, 2]", b'{"state": "online"}',
                    b'{"state": "online", "instance": 5}', b"[" * 100_000, huge):
        identity.status_seen(payload, retained=True)
    assert identity.conflict is None and identity.detected == 0


def test_session_taken_over_is_a_conflict_and_reconnects_back_off_to_the_ceiling():
    identity = NodeIdentity("edge-a", 20.0)
    identity.session_started(BROKER)
    delays = [identity.session_ended(SESSION_TAKEN_OVER)]
    assert "session taken over" in identity.conflict
    for _ in range(6):
        identity.session_started(BROKER)
        delays.append(identity.session_ended(None))  # still in conflict: still held back
    assert CONFLICT_INITIAL_DELAY / 2 <= delays[0] <= CONFLICT_INITIAL_DELAY
    assert all(10.0 <= delay <= 20.0 for delay in delays[-3:])


def test_the_conflict_clears_after_twice_the_ceiling_connected_without_a_sign():
    async def scenario() -> list[str | None]:
        identity = NodeIdentity("edge-a", 0.05)
        seen: list[str | None] = []
        changed = asyncio.Event()

        def on_change() -> None:
            seen.append(identity.conflict)
            changed.set()

        identity.on_change.append(on_change)
        identity.session_started(BROKER)
        identity.session_ended(SESSION_TAKEN_OVER)
        await asyncio.wait_for(changed.wait(), 1)
        changed.clear()
        identity.session_started(BROKER)  # connected, and nobody takes the session again
        await asyncio.wait_for(changed.wait(), 5)
        assert identity.session_ended(None) is None  # cleared: at once again
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] is not None and seen[1] is None
