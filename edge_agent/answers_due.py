"""Whether more device answers are due very soon: the hint that lets delivery coalesce.

A Modbus TCP link with several units behind it asks them one at a time, a few hundred
microseconds apart; each answer would otherwise get its own commit, publish and PUBACK.
A link counts itself in `ANSWERS_DUE.links` while it has a request in flight or queued;
delivery then defers its flush until the busy links go idle, it holds
`edge_agent.delivery.MAX_HOLD_POLLS` polls, or the next answer would come over its latency
budget (`HOLD_BUDGET_S`), so one commit covers several units' readings.
"""

from __future__ import annotations


class AnswersDue:
    """A counter, not a registry: the hot path reads one attribute."""

    __slots__ = ("links",)

    def __init__(self) -> None:
        self.links = 0  # links with a request in flight or queued


#: the process's one hint (one event loop runs every link and delivery)
ANSWERS_DUE = AnswersDue()
