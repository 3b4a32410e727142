"""Modbus TCP on an asyncio Protocol: one connection, one request in flight, nothing more.

pymodbus's async client spends more CPU per request than the agent spends on the whole
50-register poll it answers (a task for the timeout, two locks, a future per attempt, debug
strings formatted for every frame). The protocol itself is kept: requests are framed by
pymodbus's `FramerSocket` from its request PDU classes, answers are decoded into its response
PDU classes (`answers.decode`). What this adds is only the exchange: MBAP checks, a timer per
request, and the answer matched to the request by transaction id, unit and function code.

An answer whose transaction id is not the request's is one the link gave up on (it came after
its timeout): it is skipped and counted in `stray`. Bytes that are not Modbus TCP at all
end the exchange as a ProtocolError and are dropped.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from pymodbus.framer import FramerSocket
from pymodbus.pdu import ModbusPDU

from edge_agent.errors import DeviceDisconnected, DeviceTimeout, ProtocolError
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


class TcpLink(asyncio.Protocol):
    """One Modbus TCP connection shared by the units behind it (the caller serialises)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._decoder = fast_decoder()
        self._framer = FramerSocket(self._decoder)
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._tid = 0
        self._request: ModbusPDU | None = None
        self._waiter: asyncio.Future[ModbusPDU] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stray = 0  # answers that arrived after their request was given up

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
        self._fail(DeviceDisconnected(f"connection to {self.host}:{self.port} closed"))

    async def execute(self, request: ModbusPDU, timeout: float) -> ModbusPDU:
        """Sends `request` and returns its answer (which may be an exception response).

        Raises DeviceTimeout (no answer within `timeout`), ProtocolError (an answer that is
        not one to this request) or DeviceDisconnected.
        """
        transport = self._transport
        if transport is None:
            raise DeviceDisconnected(f"{self.host}:{self.port} is not connected")
        self._tid = tid = self._tid % 0xFFFF + 1  # 1..65535; 0 is never a valid echo
        request.transaction_id = tid
        loop = self._loop
        self._request = request
        self._waiter = waiter = loop.create_future()
        transport.write(self._framer.buildFrame(request))
        timer = loop.call_later(timeout, self._expire, waiter, timeout)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self, waiter: asyncio.Future[ModbusPDU], timeout: float) -> None:
        if not waiter.done() and self._request is not None:
            waiter.set_exception(DeviceTimeout(
                f"no answer to {describe(self._request)} within {timeout:g} s"))

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._buffer = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets it for TCP already; a request is one segment
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer = b""
        self._fail(DeviceDisconnected(
            f"connection to {self.host}:{self.port} lost" + (f": {exc}" if exc else "")))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while len(buffer) >= _MIN_FRAME:
            # protocol id 0, length 2..254: anything else is not Modbus TCP, and a byte
            # stream that lost its framing cannot be trusted to find it again
            if buffer[2] or buffer[3] or buffer[4] or not 2 <= buffer[5] <= _MAX_LENGTH:
                self._buffer = b""
                self._fail(ProtocolError(
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
        waiter, request = self._waiter, self._request
        if waiter is None or waiter.done() or request is None or tid != request.transaction_id:
            self.stray += 1
            return
        if request.dev_id and unit != request.dev_id:
            waiter.set_exception(WrongAnswer(f"answer from unit {unit} to {describe(request)}"))
            return
        response = decode(self._decoder, pdu)
        if response is None:
            waiter.set_exception(ProtocolError(
                f"undecodable answer to {describe(request)}: {pdu[:16].hex(' ')}"))
            return
        wrong = mismatch(request, response)
        if wrong is not None:
            waiter.set_exception(WrongAnswer(f"{wrong} in answer to {describe(request)}"))
            return
        response.dev_id, response.transaction_id = unit, tid
        waiter.set_result(response)
