"""Node name conflicts: two agents that believe they are the same node.

The MQTT client id is `edge-agent-<node>`, so two agents with one node name (a mislabelled
node, an agent started by hand next to the pod) take each other's session over, again and
again, and each one's will overwrites the other's status. Nothing else would say so. The
signs, from the strongest:

- MQTT 5: the broker ends the older connection with DISCONNECT reason 0x8E, "session taken
  over". Certain, but MQTT 3.1.1 brokers just close the socket, like any network fault.
- Every agent writes a random per-process instance id into its retained node status, and
  subscribes to that topic. The retained message a *re*connecting agent is handed (before
  its own new status, which it publishes after subscribing) must be its own: its last
  online status, or its own will. One written by another instance means someone else used
  this node's topic since this process last announced itself. On the first connection of
  a process another instance's status is expected: the previous pod's last word.
- A live (not retained) status from another instance: another agent of this name is
  connected at the same time (through another broker of a bridge, say).

While in conflict the agent reconnects after a back-off (from CONFLICT_INITIAL_DELAY up to
`mqtt.reconnect_max`) instead of at once, so two such agents cost the broker a connection
every few seconds each, not a storm. The conflict clears once the agent has stayed
connected for twice `mqtt.reconnect_max` (longer than the other agent's longest back-off)
with no new sign.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from edge_agent import logs
from edge_agent.backoff import Backoff

#: MQTT 5 reason code of a DISCONNECT sent to a client whose session another one took over
SESSION_TAKEN_OVER = 0x8E
#: an agent's status is a few hundred bytes (more with many device names); anything larger
#: on the topic is not parsed
MAX_STATUS_BYTES = 256 * 1024
#: first reconnect delay while in conflict (capped by mqtt.reconnect_max), in seconds
CONFLICT_INITIAL_DELAY = 5.0


class NodeIdentity:
    """This process's instance id, and the conflict state of its node name.

    Everything runs on the event loop: the publisher reports sessions starting and ending,
    and the messages seen on the node's own status topic.
    """

    def __init__(self, node: str, reconnect_max: float, config_hash: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.instance = secrets.token_hex(8)
        self.config_hash = config_hash  # of the config this agent runs (edge_agent.fleet)
        self.conflict: str | None = None  # why, while in conflict
        self.other: str | None = None  # the other agent's instance id, where known
        self.detected = 0  # signs of a conflict seen
        self._clock = clock
        self._brokers_seen: set[str] = set()  # where an earlier connection announced us
        self._first_here = True  # this connection is this process's first to its broker
        self._connected = False
        self._last_sign = float("-inf")
        self._clear_timer: asyncio.TimerHandle | None = None
        self.on_change: list[Callable[[], None]] = []  # conflict set or cleared
        self.configure(node, reconnect_max)

    def configure(self, node: str, reconnect_max: float) -> None:
        """(Re)applies the node name and the reconnect ceiling (a reload may change them;
        the instance id stays: it is the process's)."""
        self.node = node
        self._reconnect_max = reconnect_max
        self._backoff = Backoff(initial=min(CONFLICT_INITIAL_DELAY, reconnect_max),
                                maximum=reconnect_max)
        self.log = logs.get("edge_agent.identity", node=node)

    @property
    def clear_after(self) -> float:
        return 2 * self._reconnect_max

    # -- what the publisher reports (edge_agent.transport.base.SessionWatch) ---------------
    def session_started(self, url: str) -> None:
        """A connection is up. The retained status it is about to be handed is judged by
        whether an earlier connection of this process to this broker announced this agent
        (every connection announces it at once); per broker, because after a failover the
        other broker may still hold the previous pod's last word."""
        self._first_here = url not in self._brokers_seen
        self._brokers_seen.add(url)
        self._connected = True
        self._schedule_clear()

    def session_ended(self, reason_code: int | None) -> float | None:
        """A connection that was up ended. Returns the delay before reconnecting while in
        conflict, None for the usual immediate reconnect."""
        self._connected = False
        self._cancel_clear()
        if reason_code == SESSION_TAKEN_OVER:
            self._sign(None, "the broker handed this node's MQTT session to another client "
                             "(MQTT 5 DISCONNECT 0x8E, session taken over)")
        if self.conflict is None:
            return None
        return self._backoff.next()

    def status_seen(self, payload: bytes, retained: bool) -> None:
        """A message on this node's own status topic."""
        if len(payload) > MAX_STATUS_BYTES:
            return  # no agent's status is that big: not ours to judge
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):
            return  # a cleared retained message, or not ours to judge
        instance = body.get("instance") if isinstance(body, dict) else None
        if not isinstance(instance, str) or instance == self.instance:
            return
        if retained and self._first_here:
            return  # the previous agent's last word, handed to a process on its first connect
        when = "while this agent was connected" if not retained else \
            "since this agent's last status"
        state = f" ({body['state']})" if isinstance(body.get("state"), str) else ""
        self._sign(instance, f"another agent (instance {instance}) published this node's "
                             f"status {when}{state}")

    # -- conflict state --------------------------------------------------------------------
    def status_fields(self) -> dict[str, Any]:
        """What the node status carries besides its state, version and devices."""
        fields: dict[str, Any] = {"config": self.config_hash, "instance": self.instance}
        if self.conflict is not None:
            fields["conflict"] = self.conflict
        return fields

    def _sign(self, other: str | None, why: str) -> None:
        self._last_sign = self._clock()
        self.detected += 1
        if other is not None:
            self.other = other
        first = self.conflict is None
        self.conflict = (f"node name conflict: another agent uses the node name "
                         f"'{self.node}': {why}")
        if first:
            self.log.error("node_name_conflict", instance=self.instance, other=self.other,
                           evidence=why, action="reconnecting with back-off up to "
                           f"{self._reconnect_max:g} s; give each agent its own node name "
                           "(NODE_NAME)")
        else:  # once per reconnect at most, which the back-off keeps to every few seconds
            self.log.warning("node_name_conflict_continues", instance=self.instance,
                             other=self.other, evidence=why, signs=self.detected)
        self._schedule_clear()
        if first:
            for callback in self.on_change:
                callback()

    def _schedule_clear(self) -> None:
        """Only while connected: an agent that cannot reach the broker cannot tell."""
        self._cancel_clear()
        if self.conflict is None or not self._connected:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._clear_timer = loop.call_later(self.clear_after, self._maybe_clear)

    def _cancel_clear(self) -> None:
        if self._clear_timer is not None:
            self._clear_timer.cancel()
            self._clear_timer = None

    def _maybe_clear(self) -> None:
        """Connected for `clear_after` seconds without a new sign: the other agent is gone."""
        self._clear_timer = None
        if self.conflict is None or self._clock() - self._last_sign < self.clear_after:
            return
        self.log.warning("node_name_conflict_cleared", instance=self.instance,
                         other=self.other, quiet_for=self.clear_after)
        self.conflict, self.other = None, None
        self._backoff.reset()
        for callback in self.on_change:
            callback()
