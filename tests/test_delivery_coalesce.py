"""The flush waits for answers still due on a busy link, within a latency budget.

Delivery commits (and only then publishes) what was appended since its last flush. While a
link counts itself in ANSWERS_DUE, the flush waits for the answers it will bring, so one
commit covers several units; the first delivery that finds no link busy flushes at once, the
answer after which the next one would come over HOLD_BUDGET_S flushes at once (so answers
that come slower make smaller batches), so does the poll that makes MAX_HOLD_POLLS, and a
link that never answers holds it back by the budget at most.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
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
    monkeypatch.setattr(delivery_module, "HOLD_BUDGET_S", 60.0)  # only the link ends the wait

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


class FakeClock:
    """perf_counter() for delivery, advanced by the test: answers arrive when it says."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FarTimers:
    """The running loop, whose timers fire a minute late: only the fake clock ends a batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call_soon(self, callback: Callable[[], None]) -> asyncio.Handle:
        return self.loop.call_soon(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(60.0, callback)


def batch_sizes(monkeypatch: pytest.MonkeyPatch, answers_apart_s: float, answers: int,
                max_hold_polls: int = 100) -> list[int]:
    """Polls per commit when a busy link's answers reach delivery `answers_apart_s` apart,
    on the fake clock (the budget's timer, on the real one, is pushed out of the way)."""
    clock = FakeClock()
    monkeypatch.setattr(delivery_module, "perf_counter", clock)
    monkeypatch.setattr(delivery_module, "HOLD_BUDGET_S", 0.003)
    monkeypatch.setattr(delivery_module, "MAX_HOLD_POLLS", max_hold_polls)

    async def test() -> list[int]:
        log = CommitLog()
        delivery = delivery_on(log)
        delivery._loop = cast(asyncio.AbstractEventLoop, FarTimers(delivery._loop))
        with a_link_busy():
            for unit in range(answers):
                delivery.deliver(f"u{unit}", [], 0)
                for _ in range(5):
                    await asyncio.sleep(0)
                clock.now += answers_apart_s
        delivery.flush()  # what is still held
        return [len(commit) for commit in log.commits]

    return asyncio.run(test())


def test_a_busy_link_flushes_with_the_answer_after_which_the_next_would_be_over_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # answers 0.7 ms apart, as on the rig: the fifth comes 2.8 ms after the first, and a
    # sixth would come at 3.5 ms, over the 3 ms budget
    sizes = batch_sizes(monkeypatch, 0.0007, 20)
    assert sizes[:3] == [5, 5, 5]
    assert sum(sizes) == 20


def test_slower_answers_make_smaller_batches_within_the_same_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 1.5 ms apart: the third comes at 3 ms; waiting for a fourth would pass the budget
    sizes = batch_sizes(monkeypatch, 0.0015, 12)
    assert sizes[1:3] == [3, 3]  # once the average gap has learnt the pace
    assert max(sizes) <= 3
    assert sum(sizes) == 12


def test_a_busy_link_flushes_once_the_held_polls_reach_max_hold_polls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # answers close together: the budget would hold ten; the cap sends them in fours
    assert batch_sizes(monkeypatch, 0.0001, 12, max_hold_polls=4) == [4, 4, 4]
