"""Delivery: readings into the outbox, and the outbox to the broker through the publisher.

`deliver` is the hot path: the output names the row (`Output.telemetry`), the outbox stores
it, and one flush per event-loop iteration commits everything appended in it and pumps the
publisher; while a link has answers due (`edge_agent.answers_due`: the units behind one
Modbus TCP gateway, asked one after another) the flush waits for them within a latency
budget (HOLD_BUDGET_S) and for MAX_HOLD_POLLS polls at most, so one commit, publish pump
and PUBACK read cover several units' readings (docs/performance.md).
A message leaves the outbox only when the broker acknowledged it (see
`edge_agent.transport.mqtt`). The publisher is replaced when the MQTT settings change; this
object stays, and is the `Link` outputs publish through, so they never hold a dead client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

from edge_agent import logs, tasks
from edge_agent.answers_due import ANSWERS_DUE
from edge_agent.config import MqttConfig
from edge_agent.outbox import Outbox
from edge_agent.outputs.base import Output
from edge_agent.transport.base import Message, SessionWatch
from edge_agent.transport.mqtt import MessageHandler, MqttPublisher

#: outstanding publish-latency probes kept at most (one per flushed batch; see deliver)
MAX_LATENCY_PROBES = 4096
#: how long a flush may hold readings back while a busy link has answers due (seconds, from
#: the first reading it holds). A flush (commit, publish, PUBACK and its wake-up) costs about
#: as much CPU as reading a poll, so each answer it waits for saves CPU and adds latency. The
#: budget is in time, not only a count of polls, so it adapts to the host: the batch goes out
#: with the answer after which the next one (expected one average gap later) would come over
#: budget, and a timer at the budget ends the wait for a unit that does not answer (uvloop's
#: timers run on a clock in whole milliseconds: it fires after 2-3 ms). 4 ms saved no more
#: CPU than 3 on the rig (docs/performance.md, "What changed, measured")
HOLD_BUDGET_S = 0.003
#: ... and it goes out once it holds this many polls. With every flush a SQLite commit, five
#: polls a flush took 13 % less CPU than three on the rig (answers 0.4-0.7 ms apart). With
#: the journal (edge_agent.store.journal) a flush costs under a third of that, and three polls
#: cost the CPU that five did with SQLite, for a p99 0.74-0.76 times as long in two A/B runs
#: (five: CPU 0.89, p99 0.90). The budget alone let batches of up to ten through, and p99 was
#: 1.8 times as long (docs/performance.md, "The journal in front of SQLite")
MAX_HOLD_POLLS = 3
#: weight of the newest gap in the running average of the gaps between held answers
GAP_WEIGHT = 0.125


class Delivery:
    """The outbox and the current publisher. `observe_latency(seconds)` gets the time from
    a reading's read timestamp to the broker's acknowledgement, once per flushed batch.

    `deliver` takes readings once `start` has given it an output (the agent starts delivery
    before any device).
    """

    _output: Output  # set by start(); kept after stop() for rows appended meanwhile
    _loop: asyncio.AbstractEventLoop

    def __init__(self, outbox: Outbox, observe_latency: Callable[[float], None]) -> None:
        self.outbox = outbox
        self.observe_latency = observe_latency
        self.publisher: MqttPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._flush_timer: asyncio.TimerHandle | None = None  # a deferred flush
        self._held = 0  # polls the deferred flush holds
        self._held_since = 0.0  # perf_counter() of the deferred flush's first reading
        self._last_answer_at = 0.0  # ... and of its latest
        self._gap = HOLD_BUDGET_S / 4  # running average of the gaps between held answers
        self._published_before = 0  # by publishers replaced on reload
        self._latency_probes: dict[int, int] = {}  # outbox row id -> read ts (ms)

    # -- the hot path --------------------------------------------------------------------
    def deliver(self, device: str, readings: list[dict[str, Any]], ts_ms: int) -> None:
        outbox = self.outbox
        seq = outbox.next_seq(device)
        topic, payload = self._output.telemetry(device, seq, readings)
        row_id = outbox.append(device, seq, topic, payload)
        if self._flush_scheduled:
            # a deferred flush waits for answers still due: none are, it holds enough polls,
            # or the next answer would come over the budget: flush in this iteration
            timer = self._flush_timer
            if timer is not None:
                now = perf_counter()
                gap = self._gap = self._gap + (now - self._last_answer_at - self._gap) * GAP_WEIGHT
                self._last_answer_at = now
                self._held += 1
                if (not ANSWERS_DUE.links or self._held >= MAX_HOLD_POLLS
                        or now - self._held_since + gap > HOLD_BUDGET_S):
                    timer.cancel()
                    self._flush_timer = None
                    self._loop.call_soon(self.flush)
            return
        self._flush_scheduled = True
        if len(self._latency_probes) < MAX_LATENCY_PROBES:
            self._latency_probes[row_id] = ts_ms
        if ANSWERS_DUE.links:
            self._held = 1
            self._held_since = self._last_answer_at = perf_counter()
            self._flush_timer = self._loop.call_later(HOLD_BUDGET_S, self.flush)
        else:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Commits everything appended since the last flush at once, then publishes it."""
        self._flush_scheduled = False
        timer = self._flush_timer
        if timer is not None:
            timer.cancel()
            self._flush_timer = None
        self.outbox.flush()
        self.pump()

    def _on_acked(self, ids: list[int]) -> None:
        probes = self._latency_probes
        if not probes:
            return
        now = time.time()  # not truncated to ms: a sub-millisecond publish is not 0
        observe = self.observe_latency
        for row_id in ids:
            read_ms = probes.pop(row_id, None)
            if read_ms is not None:
                observe(max(0.0, now - read_ms / 1000))

    # -- the publisher's lifecycle -------------------------------------------------------
    def start(self, config: MqttConfig, client_id: str, output: Output,
              on_message: MessageHandler, watch: SessionWatch | None = None) -> None:
        """Connects `output` to the broker: a publisher that runs until `stop`. `watch` is
        told of every connection and may hold a reconnect back (node name conflicts)."""
        self._loop = asyncio.get_running_loop()
        self._output = output
        self.publisher = MqttPublisher(config, client_id, self.outbox, output,
                                       on_message=on_message, on_acked=self._on_acked,
                                       watch=watch)
        self._task = tasks.spawn(self.publisher.run(), "mqtt", logs.get("edge_agent.mqtt"))

    async def drain(self, timeout: float) -> bool:
        """Publishes what is buffered; True if the outbox emptied within `timeout`."""
        self.flush()
        if self.publisher is None:
            return not self.outbox.depth()
        return await self.publisher.drain(timeout)

    async def stop(self) -> None:
        """Says the output's last word (if connected), then disconnects cleanly."""
        publisher, task = self.publisher, self._task
        if publisher is None:
            return
        await publisher.stop(self._output.shutdown())
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._published_before += publisher.published
        self.publisher, self._task = None, None

    # -- state, for the operations view --------------------------------------------------
    def published_total(self) -> int:
        return self._published_before + (self.publisher.published if self.publisher else 0)

    def stalled_for(self) -> float:
        """Seconds messages have waited while connected with none acknowledged."""
        return self.publisher.stalled_for() if self.publisher is not None else 0.0

    @property
    def stall_after(self) -> float:
        """The pump counts as stalled after this long: the broker's keepalive."""
        return float(self.publisher.config.keepalive) if self.publisher is not None else 0.0

    def state_degraded(self) -> str | None:
        """Why the output's own state (Sparkplug bdSeq) is kept in memory, or None."""
        return getattr(self._output, "degraded", None)

    @property
    def last_error(self) -> str | None:
        return self.publisher.last_error if self.publisher is not None else None

    # -- Link: what outputs publish through ----------------------------------------------
    def is_connected(self) -> bool:
        return self.publisher is not None and self.publisher.is_connected()

    def publish_now(self, message: Message) -> None:
        if self.publisher is not None:
            self.publisher.publish_now(message)

    def publish_state(self, topic: str, payload: bytes) -> None:
        if self.publisher is not None:
            self.publisher.publish_state(topic, payload)

    def pump(self) -> None:
        if self.publisher is not None:
            self.publisher.pump()

    def disconnect(self) -> None:
        if self.publisher is not None:
            self.publisher.disconnect()
