"""Answers that are not the answer to the request, over real transports (TCP socket, pty).

A unit (or a gateway) out of step with the master can answer a read with another function
code, or with more or fewer registers than asked. None of its values may be published as
good: each is a protocol error, counted, and the block's points are bad while the unit's
other blocks still publish. The device here is a real peer on the transport that answers
what the test tells it to, framed by pymodbus's server-side framers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from edge_agent.answers_due import ANSWERS_DUE
from edge_agent.errors import DeviceDisconnected, DeviceTimeout, ProtocolError
from edge_agent.model import BAD, GOOD
from edge_agent_drivers.modbus.answers import WrongAnswer, mismatch
from edge_agent_drivers.modbus.config import ModbusDevice
from edge_agent_drivers.modbus.driver import ModbusDriver
from edge_agent_simulators.pty import Pty

Reply = Callable[[ModbusPDU], ModbusPDU | bytes | None]


def run(test: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


def honest(request: ModbusPDU) -> ModbusPDU:
    """The right answer: register n holds 100 + n, in the table asked."""
    cls = ReadHoldingRegistersResponse if request.function_code == 3 else \
        ReadInputRegistersResponse
    return cls(registers=[100 + a for a in range(request.address,
                                                  request.address + request.count)])


class Peer:
    """A device on a transport: decodes each request, answers with `self.reply(request)`
    (a PDU to frame, raw bytes to send as they are, or None for silence)."""

    def __init__(self, framing: str) -> None:
        self.framer = (FramerSocket if framing == "socket" else FramerRTU)(DecodePDU(True))
        self.reply: Reply = honest
        self.asked: list[tuple[int, int, int]] = []
        self.buffer = b""

    def received(self, data: bytes, send: Callable[[bytes], None]) -> None:
        self.send = send  # the connection the last request came on
        self.buffer += data
        while self.buffer:
            used, request = self.framer.handleFrame(self.buffer, 0, 0)
            if not used:
                return
            self.buffer = self.buffer[used:]
            if request is None:
                continue
            self.asked.append((request.function_code, request.address, request.count))
            answer = self.reply(request)
            if isinstance(answer, ModbusPDU):
                answer.dev_id, answer.transaction_id = request.dev_id, request.transaction_id
                answer = self.framer.buildFrame(answer)
            if answer:
                send(answer)


@contextlib.asynccontextmanager
async def peer(framing: str) -> AsyncIterator[tuple[str, Peer, list[Any]]]:
    """A Peer on a TCP socket (framing "socket") or on a pty ("rtu"); yields (port for the
    driver, the peer, the open server-side connections)."""
    device = Peer(framing)
    connections: list[Any] = []
    if framing == "socket":
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(4096):
                    device.received(data, writer.write)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        try:
            yield f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", device, connections
        finally:
            for writer in connections:
                writer.close()
            server.close()
        return
    holder: list[Pty] = []
    pty = Pty(lambda data: device.received(data, holder[0].write))
    holder.append(pty)
    try:
        yield pty.path, device, connections
    finally:
        pty.close()


POINTS = [{"name": "h0", "address": 0}, {"name": "h1", "address": 1},
          {"name": "i0", "table": "input", "address": 0}]


@contextlib.asynccontextmanager
async def connected(port: str, points: list[dict[str, Any]] = POINTS,
                    **settings: Any) -> AsyncIterator[ModbusDriver]:
    options: dict[str, Any] = {"timeout": 0.3, "retries": 1}
    if not port.startswith("tcp://"):
        options["framer"] = "rtu"
    options.update(settings)
    driver = ModbusDriver(ModbusDevice(name="u", driver="modbus", port=port, points=points,
                                       **options))
    await driver.connect()
    driver.errors.clear()
    try:
        yield driver
    finally:
        await driver.close()


def by_metric(sample: Any) -> dict[str, tuple[Any, str]]:
    return {r.metric: (r.value, r.quality) for r in sample.readings}


WRONG_ANSWERS: dict[str, Reply] = {
    "fc04 answer to fc03": lambda r: ReadInputRegistersResponse(
        registers=[7] * r.count) if r.function_code == 3 else honest(r),
    "one register more": lambda r: ReadHoldingRegistersResponse(
        registers=[7] * (r.count + 1)) if r.function_code == 3 else honest(r),
    "one register fewer": lambda r: ReadHoldingRegistersResponse(
        registers=[7] * (r.count - 1)) if r.function_code == 3 else honest(r),
    "exception for fc04 to fc03": lambda r: ExceptionResponse(
        4, 2) if r.function_code == 3 else honest(r),
}


@pytest.mark.parametrize("framing", ["socket", "rtu"])
@pytest.mark.parametrize("wrong", list(WRONG_ANSWERS))
def test_an_answer_to_another_request_is_a_protocol_error_and_its_block_is_bad(framing, wrong):
    async def test() -> None:
        async with peer(framing) as (port, device, _), connected(port) as driver:
            device.reply = WRONG_ANSWERS[wrong]
            device.asked.clear()
            sample = await driver.poll()
            assert by_metric(sample) == {"h0": (None, BAD), "h1": (None, BAD),
                                         "i0": (100, GOOD)}
            assert driver.errors == {"protocol": 1}
            # the unit answers, out of step: asking again in the same poll would not help
            assert device.asked == [(3, 0, 2), (4, 0, 1)]
            device.reply = honest
            assert by_metric(await driver.poll()) == {"h0": (100, GOOD), "h1": (101, GOOD),
                                                      "i0": (100, GOOD)}

    run(test)


def test_a_unit_answering_only_wrongly_still_publishes_its_points_bad():
    async def test() -> None:
        async with peer("socket") as (port, device, _), connected(port) as driver:
            device.reply = lambda r: ReadInputRegistersResponse(registers=[7] * r.count) \
                if r.function_code == 3 else ReadHoldingRegistersResponse(registers=[7])
            sample = await driver.poll()
            assert {quality for _, quality in by_metric(sample).values()} == {BAD}
            assert sample.ts_ms > 0
            assert driver.errors == {"protocol": 2}

    run(test)


def test_a_write_answer_echoing_another_value_is_a_protocol_error():
    async def test() -> None:
        points = [{"name": "sp", "address": 5, "writable": True}]
        async with peer("socket") as (port, device, _), connected(port, points) as driver:
            device.reply = lambda r: WriteSingleRegisterResponse(
                address=r.address, registers=[r.registers[0] + 1]) \
                if isinstance(r, WriteSingleRegisterRequest) else honest(r)
            with pytest.raises(WrongAnswer, match="value"):
                await driver.write("sp", 42)

    run(test)


# -- the TCP link ---------------------------------------------------------------------------

def test_an_answer_from_another_unit_id_is_a_protocol_error():
    async def test() -> None:
        async with peer("socket") as (port, device, _), connected(port, unit=3) as driver:
            def other_unit(request: ModbusPDU) -> bytes:
                answer = honest(request)
                answer.dev_id, answer.transaction_id = 4, request.transaction_id
                return device.framer.buildFrame(answer)

            device.reply = other_unit
            sample = await driver.poll()
            assert {quality for _, quality in by_metric(sample).values()} == {BAD}
            assert driver.errors == {"protocol": 2}

    run(test)


def test_a_late_answer_is_skipped_by_its_transaction_id_and_the_next_request_gets_its_own():
    async def test() -> None:
        points = [{"name": "h0", "address": 0}]
        async with peer("socket") as (port, device, _), \
                connected(port, points, timeout=0.1, retries=0) as driver:
            loop = asyncio.get_running_loop()
            late: list[bytes] = []

            def too_slow(request: ModbusPDU) -> None:  # answered after the timeout, below
                stale = ReadHoldingRegistersResponse(registers=[999])
                late.append(device.framer.buildFrame(_framed(stale, request)))

            device.reply = too_slow
            with pytest.raises(DeviceTimeout):
                await driver.poll()

            def late_then_right(request: ModbusPDU) -> bytes:
                right = device.framer.buildFrame(_framed(honest(request), request))
                loop.call_later(0.02, device.send, right)
                return late[0]  # the previous request's answer arrives in this exchange

            device.reply = late_then_right
            assert by_metric(await driver.poll()) == {"h0": (100, GOOD)}
            assert driver._bus.link.stray == 1

    run(test)


def test_bytes_that_are_not_modbus_tcp_are_a_protocol_error():
    async def test() -> None:
        points = [{"name": "h0", "address": 0}]
        async with peer("socket") as (port, device, _), \
                connected(port, points, retries=0) as driver:
            device.reply = lambda r: b"HTTP/1.1 400 Bad Request\r\n\r\n"
            with pytest.raises(ProtocolError, match="not a Modbus TCP frame"):
                await driver.poll()
            device.reply = honest
            assert by_metric(await driver.poll()) == {"h0": (100, GOOD)}

    run(test)


def test_a_connection_the_device_closes_is_a_disconnect_and_connect_opens_it_again():
    async def test() -> None:
        points = [{"name": "h0", "address": 0}]
        async with peer("socket") as (port, _, connections), \
                connected(port, points) as driver:
            idle = ANSWERS_DUE.links
            connections[0].close()
            with pytest.raises(DeviceDisconnected):
                for _ in range(50):  # the close reaches the agent's side shortly
                    await driver.poll()
                    await asyncio.sleep(0.01)
            await driver.connect()
            assert by_metric(await driver.poll()) == {"h0": (100, GOOD)}
            assert len(connections) == 2
            assert ANSWERS_DUE.links == idle  # the lost connection's requests are not due

    run(test)


def test_requests_of_units_behind_one_gateway_queue_and_a_silent_unit_costs_one_timeout():
    async def test() -> None:
        points = [{"name": "h0", "address": 0}]
        async with peer("socket") as (port, device, _), \
                connected(port, points, unit=1) as healthy, \
                connected(port, points, unit=2, timeout=0.2, retries=0) as silent:
            assert healthy._bus is silent._bus
            idle = ANSWERS_DUE.links
            device.reply = lambda r: None if r.dev_id == 2 else honest(r)
            loop = asyncio.get_running_loop()
            started = loop.time()
            dead, alive = await asyncio.gather(silent.poll(), healthy.poll(),
                                               return_exceptions=True)
            assert isinstance(dead, DeviceTimeout)
            assert by_metric(alive) == {"h0": (100, GOOD)}
            assert loop.time() - started < 0.2 + 0.15  # one timeout, then the answer
            assert ANSWERS_DUE.links == idle

    run(test)


def test_units_with_their_own_timeouts_on_one_link_each_time_out_at_their_own():
    """The link's requests share one timer (transport.TcpLink): a silent unit with a short
    timeout after one with a long timeout is not held to the long one, and a silent unit
    with a longer timeout than the request before it still times out when the timer that
    was armed for that request finds it in flight."""
    async def test() -> None:
        points = [{"name": "h0", "address": 0}]
        async with peer("socket") as (port, device, _), \
                connected(port, points, unit=1, timeout=60) as patient, \
                connected(port, points, unit=2, timeout=0.1, retries=0) as short, \
                connected(port, points, unit=3, timeout=0.3, retries=0) as longer:
            device.reply = lambda r: honest(r) if r.dev_id == 1 else None
            assert by_metric(await patient.poll()) == {"h0": (100, GOOD)}  # armed: 60 s
            with pytest.raises(DeviceTimeout):  # not 60 s: the run's own limit is 30 s
                await asyncio.wait_for(short.poll(), 10)
            device.reply = lambda r: honest(r) if r.dev_id == 2 else None
            assert by_metric(await short.poll()) == {"h0": (100, GOOD)}  # armed: 0.1 s
            with pytest.raises(DeviceTimeout):
                await asyncio.wait_for(longer.poll(), 10)
            device.reply = honest
            assert by_metric(await longer.poll()) == {"h0": (100, GOOD)}

    run(test)


def test_a_caller_cancelled_while_queued_or_in_flight_leaves_the_link_working():
    async def test() -> None:
        points = [{"name": "h0", "address": 0}]
        async with peer("socket") as (port, device, _), \
                connected(port, points, timeout=0.2, retries=0) as driver:
            answers: list[bytes] = []
            device.asked.clear()
            device.reply = lambda r: answers.append(  # type: ignore[func-returns-value]
                device.framer.buildFrame(_framed(honest(r), r)))
            idle = ANSWERS_DUE.links
            in_flight = asyncio.ensure_future(driver.poll())
            queued = asyncio.ensure_future(driver.poll())
            await asyncio.sleep(0.05)
            assert len(answers) == 1  # one request on the wire, the other waits its turn
            assert ANSWERS_DUE.links == idle + 1  # delivery may wait for these answers
            in_flight.cancel()
            queued.cancel()
            await asyncio.gather(in_flight, queued, return_exceptions=True)
            device.send(answers[0])  # the answer nobody waits for any more
            device.reply = honest
            assert by_metric(await driver.poll()) == {"h0": (100, GOOD)}
            assert len(device.asked) == 2  # the cancelled queued request was never sent
            assert ANSWERS_DUE.links == idle  # nothing due: delivery flushes at once

    run(test)


def _framed(answer: ModbusPDU, request: ModbusPDU) -> ModbusPDU:
    answer.dev_id, answer.transaction_id = request.dev_id, request.transaction_id
    return answer


# -- the check itself ------------------------------------------------------------------------

def test_mismatch_accepts_exactly_the_answer_to_the_request():
    read = ReadHoldingRegistersRequest(address=10, count=3, dev_id=1)
    assert mismatch(read, ReadHoldingRegistersResponse(registers=[1, 2, 3])) is None
    assert mismatch(read, ExceptionResponse(3, 2)) is None
    assert mismatch(read, ReadInputRegistersResponse(registers=[1, 2, 3])) == \
        "answer with function 04"
    assert mismatch(read, ReadHoldingRegistersResponse(registers=[1, 2])) == "2 registers"
    assert mismatch(read, ExceptionResponse(4, 2)) == "exception for function 04"
    write = WriteSingleRegisterRequest(address=4, registers=[9], dev_id=1)
    assert mismatch(write, WriteSingleRegisterResponse(address=4, registers=[9])) is None
    assert mismatch(write, WriteSingleRegisterResponse(address=5, registers=[9])) == \
        "answer for address 5"


def test_the_next_unit_is_asked_only_after_the_last_answer_was_handled():
    """The link sends the next queued request one callback after settling an answer, so the
    poll that answer wakes decodes and delivers first (transport.TcpLink._settle): a request
    sent at once woke the device's process while that step still had the CPU to use."""
    async def test() -> None:
        points = [{"name": "h0", "address": 0}]
        async with peer("socket") as (port, _, _), \
                connected(port, points, unit=1) as first, \
                connected(port, points, unit=2) as second:
            link = first._bus.link
            assert link is not None and link is second._bus.link
            events: list[str] = []
            transport = link._transport
            write = transport.write

            def sent(data: bytes) -> None:
                events.append(f"asked unit {data[6]}")  # MBAP: the unit id is byte 6
                write(data)

            transport.write = sent

            async def poll(driver: ModbusDriver, unit: int) -> None:
                await driver.poll()
                events.append(f"unit {unit} handled")

            await asyncio.gather(poll(first, 1), poll(second, 2))
            assert events == ["asked unit 1", "unit 1 handled", "asked unit 2",
                              "unit 2 handled"]

    run(test)
