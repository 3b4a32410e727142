"""The flush waits for answers still due on a busy link, but never past COALESCE_S and
never for more than HOLD_POLLS polls.

Delivery commits (and only then publishes) what was appended since its last flush. While a
link counts itself in ANSWERS_DUE, the flush waits for the answers it will bring, so one
commit covers several units; the first delivery that finds no link busy flushes at once, the
poll that makes HOLD_POLLS flushes at once, and a link that never answers holds it back by
COALESCE_S at most.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import pytest

from edge_agent import delivery as delivery_module
from edge_agent.answers_due import ANSWERS_DUE
from edge_agent.delivery import Delivery
from edge_agent.outbox import Outbox
from edge_agent.outputs.base import Output


class CommitLog:
    """The part of an outbox delivery uses, recording which seqs each commit made durable."""

    def __init__(self) -> None:
        self.seqs: Counter[str] = Counter()
        self.pending: list[int] = []
        self.commits: list[list[int]] = []

    def next_seq(self, device: str) -> int:
        self.seqs[device] += 1
        return self.seqs[device]

    def append(self, device: str, seq: int, topic: str, payload: bytes) -> int:
        self.pending.append(seq)
        return seq

    def flush(self) -> None:
        if self.pending:
            self.commits.append(self.pending)
            self.pending = []


class Rows:
    def telemetry(self, device: str, seq: int, readings: list[Any]) -> tuple[str, bytes]:
        return f"t/{device}", b"{}"


def delivery_on(log: CommitLog) -> Delivery:
    delivery = Delivery(cast(Outbox, log), lambda seconds: None)
    delivery._loop = asyncio.get_running_loop()  # what start() sets, without a broker
    delivery._output = cast(Output, Rows())
    return delivery


@contextlib.contextmanager
def a_link_busy() -> Iterator[None]:
    """A link with answers due, as a TcpLink counts itself while it has requests out."""
    ANSWERS_DUE.links += 1
    try:
        yield
    finally:
        ANSWERS_DUE.links -= 1


async def committed(log: CommitLog) -> None:
    while not log.commits:
        await asyncio.sleep(0.001)


def test_answers_due_hold_the_flush_and_the_first_delivery_without_them_flushes_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery_module, "COALESCE_S", 60.0)  # only the link ends the wait
    monkeypatch.setattr(delivery_module, "HOLD_POLLS", 10)

    async def test() -> None:
        log = CommitLog()
        delivery = delivery_on(log)
        with a_link_busy():
            delivery.deliver("u1", [], 0)
            for _ in range(5):
                await asyncio.sleep(0)
            delivery.deliver("u2", [], 0)
            for _ in range(5):
                await asyncio.sleep(0)
            assert log.commits == []  # the link still has answers due
        delivery.deliver("u3", [], 0)
        await asyncio.wait_for(committed(log), 10)
        assert log.commits == [[1, 1, 1]]  # one commit for the three units

    asyncio.run(test())


def test_a_link_that_stays_busy_holds_the_flush_back_by_the_deadline_only() -> None:
    async def test() -> None:
        log = CommitLog()
        delivery = delivery_on(log)
        with a_link_busy():
            delivery.deliver("u1", [], 0)
            await asyncio.wait_for(committed(log), 10)
            assert log.commits == [[1]]

    asyncio.run(test())


def test_a_busy_link_flushes_once_the_held_polls_reach_hold_polls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery_module, "COALESCE_S", 60.0)  # only the count ends the wait

    async def test() -> None:
        log = CommitLog()
        delivery = delivery_on(log)
        with a_link_busy():
            for unit in range(1, delivery_module.HOLD_POLLS + 2):
                delivery.deliver(f"u{unit}", [], 0)
                for _ in range(5):
                    await asyncio.sleep(0)
            # the first HOLD_POLLS went in one commit; the one after waits for its own batch
            assert log.commits == [[1] * delivery_module.HOLD_POLLS]
            assert log.pending == [1]
        delivery.deliver("u0", [], 0)  # no answers due: the held batch goes at once
        await asyncio.wait_for(committed_count(log, 2), 10)
        assert log.commits[1] == [1, 1]

    asyncio.run(test())


async def committed_count(log: CommitLog, count: int) -> None:
    while len(log.commits) < count:
        await asyncio.sleep(0.001)
