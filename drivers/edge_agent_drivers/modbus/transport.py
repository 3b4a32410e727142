"""Modbus TCP on an asyncio Protocol: one connection, one request in flight, nothing more.

pymodbus's async client spends more CPU per request than the agent spends on the whole
50-register poll it answers (a task for the timeout, two locks, a future per attempt, debug
strings formatted for every frame). The protocol itself is kept: requests are framed by
pymodbus's `FramerSocket` from its request PDU classes, answers are decoded into its response
PDU classes (`answers.decode`). What this adds is only the exchange: MBAP checks, a deadline per
request, and the answer matched to the request by transaction id, unit and function code.

The deadlines share one timer per link, re-armed when it fires (as the device runner's
`Watchdog` does): a timer made and cancelled for every request cost more CPU than building
and sending the request (about 15 us per request on the peer rig, bench/bench_readside.py).

An answer whose transaction id is not the request's is one the link gave up on (it came after
its timeout): it is skipped and counted in `stray`. Bytes that are not Modbus TCP at all
end the exchange as a ProtocolError and are dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from pymodbus.framer import FramerSocket
from pymodbus.pdu import ModbusPDU

from edge_agent.sdk import ANSWERS_DUE, DeviceDisconnected, DeviceTimeout, ProtocolError
from edge_agent_drivers.modbus.answers import (
    WrongAnswer,
    decode,
    describe,
    fast_decoder,
    mismatch,
)

#: MBAP header (7 bytes) + function code
_MIN_FRAME = 8
#: largest MBAP length field: unit id + a 253-byte PDU
_MAX_LENGTH = 254
#: how early the link's timer may fire and still expire the request in flight (seconds)
_TIMER_SLACK = 0.001


class _Exchange:
    """One request on the link: sent when the link is free, settled by its answer or when
    its deadline (loop time, set when it is sent) passes."""

    __slots__ = ("deadline", "future", "request", "timeout")

    def __init__(self, request: ModbusPDU, timeout: float,
                 future: asyncio.Future[ModbusPDU]) -> None:
        self.request, self.timeout, self.future = request, timeout, future
        self.deadline = 0.0


class TcpLink(asyncio.Protocol):
    """One Modbus TCP connection shared by the units behind it: one request in flight.

    Requests queue in arrival order (a unit that does not answer costs those behind it one
    timeout each, no more). The next request goes out right after the previous one's answer
    has been handled (see `_settle`), without a lock hand-off. While a request is in flight
    or queued the link counts itself in `ANSWERS_DUE`, so delivery waits for those answers
    before it commits.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._decoder = fast_decoder()
        self._framer = FramerSocket(self._decoder)
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._tid = 0
        self._current: _Exchange | None = None
        self._queue: deque[_Exchange] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the link's one timer and when it fires: at or before the deadline in flight
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.stray = 0  # answers that arrived after their request was given up
        self._busy = False  # counted in ANSWERS_DUE: a request in flight or queued

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def connect(self, timeout: float) -> bool:
        """Opens the connection; False when it cannot be opened within `timeout`."""
        if self._transport is not None:
            return True
        self._loop = loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, self.host, self.port), timeout)
        except (OSError, TimeoutError):
            return False
        return True

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._fail_all(DeviceDisconnected(f"connection to {self.host}:{self.port} closed"))

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the link was opened on (set by connect, before any exchange)."""
        if self._loop is None:
            raise DeviceDisconnected(f"{self.host}:{self.port} is not connected")
        return self._loop

    def request(self, request: ModbusPDU, timeout: float) -> asyncio.Future[ModbusPDU]:
        """Queues `request`; the future gets its answer (which may be an exception response).

        Or DeviceTimeout (no answer within `timeout` of sending it), ProtocolError (bytes
        that are not the answer to it) or DeviceDisconnected.
        """
        if self._transport is None:
            raise DeviceDisconnected(f"{self.host}:{self.port} is not connected")
        exchange = _Exchange(request, timeout, self._running_loop().create_future())
        if self._current is None and not self._queue:
            self._send(exchange)
        else:
            self._queue.append(exchange)
        if not self._busy:
            self._busy = True
            ANSWERS_DUE.links += 1
        return exchange.future

    def _check_idle(self) -> None:
        """Leaves ANSWERS_DUE once nothing is in flight or queued."""
        if self._busy and self._current is None and not self._queue:
            self._busy = False
            ANSWERS_DUE.links -= 1

    def _send(self, exchange: _Exchange) -> None:
        self._tid = tid = self._tid % 0xFFFF + 1  # 1..65535; 0 is never a valid echo
        request = exchange.request
        request.transaction_id = tid
        self._current = exchange
        self._transport.write(self._framer.buildFrame(request))  # type: ignore[union-attr]
        loop = self._running_loop()
        exchange.deadline = deadline = loop.time() + exchange.timeout
        timer = self._timer
        if timer is None or self._timer_at > deadline:  # else it fires first and re-arms
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """Expires the exchange in flight if its deadline has passed; else waits for it."""
        self._timer = None
        exchange = self._current
        if exchange is None:
            return  # nothing in flight: the next send arms the timer
        loop = self._running_loop()
        # a timer may fire a little before its time (uvloop rounds to the millisecond):
        # within that, the deadline has come, rather than re-arming for a few microseconds
        if loop.time() + _TIMER_SLACK >= exchange.deadline:
            self._settle(exchange, DeviceTimeout(
                f"no answer to {describe(exchange.request)} within {exchange.timeout:g} s"))
        else:
            self._timer_at = exchange.deadline
            self._timer = loop.call_at(exchange.deadline, self._on_timer)

    def _settle(self, exchange: _Exchange, answer: ModbusPDU | Exception) -> None:
        """Ends the exchange in flight with `answer` and sends the next one still wanted."""
        future = exchange.future
        if not future.done():  # done: its caller was cancelled meanwhile
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        self._current = None
        # The next request goes out one callback later: after the step of the task this
        # answer wakes (its readings decoded and delivered), before their flush. Sent at
        # once, the request woke the device's process while the agent still had this
        # answer's readings to handle; where that process shares the host's cores (the rig's
        # simulator, a gateway on the node) it took the CPU from under that step. The link
        # stays in ANSWERS_DUE meanwhile, so delivery holds the flush for the next answer
        # (docs/performance.md: p50 0.4 ms lower in every round, p99 0.59, CPU 0.96).
        if self._queue:
            self._running_loop().call_soon(self._send_next)
        else:
            self._check_idle()

    def _send_next(self) -> None:
        if self._current is not None:
            return
        queue = self._queue
        while queue and self._transport is not None:
            following = queue.popleft()
            if not following.future.done():
                self._send(following)
                return
        self._check_idle()

    def _fail_all(self, error: Exception) -> None:
        exchanges = ([self._current] if self._current is not None else []) + list(self._queue)
        self._current = None
        self._queue.clear()
        self._check_idle()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for exchange in exchanges:
            if not exchange.future.done():
                exchange.future.set_exception(error)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self._transport = transport  # asyncio and uvloop both set TCP_NODELAY
        self._buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer = b""
        self._fail_all(DeviceDisconnected(
            f"connection to {self.host}:{self.port} lost" + (f": {exc}" if exc else "")))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while len(buffer) >= _MIN_FRAME:
            # protocol id 0, length 2..254: anything else is not Modbus TCP, and a byte
            # stream that lost its framing cannot be trusted to find it again
            if buffer[2] or buffer[3] or buffer[4] or not 2 <= buffer[5] <= _MAX_LENGTH:
                self._buffer = b""
                if self._current is not None:
                    self._settle(self._current, ProtocolError(
                        f"not a Modbus TCP frame from {self.host}:{self.port}: "
                        f"{bytes(buffer[:8]).hex(' ')}"))
                return
            used, unit, tid, pdu = self._framer.decode(buffer)
            if not used:
                break
            buffer = buffer[used:]
            self._answer(tid, unit, pdu)
        self._buffer = buffer

    def eof_received(self) -> bool:
        return False  # the peer closed its side: close ours, connection_lost follows

    def _answer(self, tid: int, unit: int, pdu: bytes) -> None:
        exchange = self._current
        if exchange is None or tid != exchange.request.transaction_id:
            self.stray += 1
            return
        request = exchange.request
        if request.dev_id and unit != request.dev_id:
            self._settle(exchange, WrongAnswer(f"answer from unit {unit} to {describe(request)}"))
            return
        response = decode(self._decoder, pdu)
        if response is None:
            self._settle(exchange, ProtocolError(
                f"undecodable answer to {describe(request)}: {pdu[:16].hex(' ')}"))
            return
        wrong = mismatch(request, response)
        if wrong is not None:
            self._settle(exchange, WrongAnswer(f"{wrong} in answer to {describe(request)}"))
            return
        response.dev_id, response.transaction_id = unit, tid
        self._settle(exchange, response)
