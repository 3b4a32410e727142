"""The Modbus driver against simulated units over real transports (TCP sockets, ptys).

Driver and simulator share one event loop here, so each test can poll, flip a fault and look
at what the simulated unit was asked (`Unit.requests`, `Unit.outcomes`) step by step. The
driver code is the production code: pymodbus clients on a socket or a serial port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from edge_agent.errors import DeviceError, DeviceTimeout, ProtocolError, WriteRefused
from edge_agent.model import BAD, GOOD
from edge_agent_drivers.modbus.bus import Bus, ExceptionResponse
from edge_agent_drivers.modbus.config import ModbusDevice
from edge_agent_drivers.modbus.driver import ModbusDriver
from edge_agent_simulators.modbus import Faults, ModbusSimulator, PtyEndpoint, Register, Unit
from edge_agent_simulators.waves import Wave
from tests.test_decode import TABLE


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


def unit(unit_id: int, registers: list[tuple], **faults: Any) -> Unit:
    """registers: (table, address, type, value[, order[, length]])"""
    regs = [Register(t, a, ty, rest[0] if rest else "ABCD", Wave(v), *rest[1:2])
            for t, a, ty, v, *rest in registers]
    return Unit(unit_id, regs, Faults(**faults))


_UNITS_ON: dict[str, list[Unit]] = {}  # port -> the simulated units behind it


@contextlib.asynccontextmanager
async def line(units: list[Unit], framing: str = "rtu") -> AsyncIterator[tuple[str, Any]]:
    """Simulated units on one transport; yields (port for the driver, pty endpoint or None)."""
    simulator = ModbusSimulator({u.unit_id: u for u in units}, framing)
    if framing == "socket":
        server = await simulator.serve_tcp("127.0.0.1", 0)
        port = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        _UNITS_ON[port] = units
        try:
            yield port, None
        finally:
            server.close()
        return
    endpoint = PtyEndpoint(simulator)
    _UNITS_ON[endpoint.path] = units
    try:
        yield endpoint.path, endpoint
    finally:
        endpoint.close()


@contextlib.asynccontextmanager
async def driver(port: str, points: list[dict[str, Any]], faults_at_connect: bool = False,
                 **device: Any) -> AsyncIterator[ModbusDriver]:
    """A connected driver. Connecting asks the unit once (see ModbusDriver.connect); unless
    `faults_at_connect`, that exchange runs without faults and is not counted, so each test
    sees only what its polls did."""
    settings: dict[str, Any] = {"timeout": 0.3, "max_gap": 0}
    if not port.startswith("tcp://"):
        settings["framer"] = "rtu"
    settings.update(device)
    config = ModbusDevice(name=f"unit-{settings.get('unit', 1)}", driver="modbus", port=port,
                          points=points, **settings)
    instance = ModbusDriver(config)
    units = _UNITS_ON[port]
    saved = [u.faults for u in units]
    if not faults_at_connect:
        for u in units:
            u.faults = Faults()
    try:
        await instance.connect()
    finally:
        for u, faults in zip(units, saved, strict=True):
            u.faults = faults
    if not faults_at_connect:
        for u in units:
            u.requests.clear()
            u.outcomes.clear()
        instance.errors.clear()
    try:
        yield instance
    finally:
        await instance.close()


def values(sample: Any) -> dict[str, Any]:
    return {r.metric: r.value for r in sample.readings if r.quality == GOOD}


def qualities(sample: Any) -> dict[str, str]:
    return {r.metric: r.quality for r in sample.readings}


# -- every type and word order, end to end ------------------------------------------------

def _typed_map() -> tuple[list[tuple], list[dict[str, Any]], dict[str, Any]]:
    """Every row of the decode table laid out at its own address, plus bools and a string."""
    registers, points, expected = [], [], {}
    address = 0
    for i, (type_name, order, words, value) in enumerate(TABLE):
        registers.append(("holding", address, type_name, value, order))
        points.append({"name": f"v{i}", "address": address, "type": type_name, "order": order})
        expected[f"v{i}"] = value
        address += len(words)
    registers += [("holding", address, "uint16", 0b1010_0000_0000_0101),
                  ("holding", address + 1, "string", "PUMP-7", "ABCD", 8),
                  ("input", 0, "float32", 21.5, "CDAB"), ("coil", 3, "bool", True),
                  ("discrete", 1, "bool", True)]
    points += [{"name": "bit0", "address": address, "type": "bool", "bit": 0},
               {"name": "bit1", "address": address, "type": "bool", "bit": 1},
               {"name": "bit15", "address": address, "type": "bool", "bit": 15},
               {"name": "word", "address": address, "type": "bool"},
               {"name": "tag", "address": address + 1, "type": "string", "length": 8},
               {"name": "in", "table": "input", "address": 0, "type": "float32",
                "order": "CDAB"},
               {"name": "c3", "table": "coil", "address": 3, "type": "bool"},
               {"name": "c4", "table": "coil", "address": 4, "type": "bool"},
               {"name": "d1", "table": "discrete", "address": 1, "type": "bool"}]
    expected.update(bit0=True, bit1=False, bit15=True, word=True, tag="PUMP-7", **{"in": 21.5},
                    c3=True, c4=False, d1=True)
    return registers, points, expected


@pytest.mark.parametrize("framing", ["socket", "rtu", "ascii"])
def test_every_type_and_order_reads_correctly_through_the_simulator(framing):
    registers, points, expected = _typed_map()

    async def test() -> None:
        async with line([unit(1, registers)], framing) as (port, _), \
                driver(port, points, framer=None if framing == "socket" else framing) as dev:
            sample = await dev.poll()
            assert values(sample) == expected
            assert set(qualities(sample).values()) == {GOOD}

    run(test)


# -- coalescing, counted at the unit -------------------------------------------------------

def test_coalescing_issues_the_minimal_requests_for_a_fixed_map():
    registers = [("holding", 0, "int16", 1), ("holding", 1, "float32", 2.5),
                 ("holding", 3, "uint32", 3), ("holding", 10, "uint16", 4),
                 ("holding", 200, "uint16", 5), ("input", 0, "uint16", 6),
                 ("input", 1, "int64", 7), ("coil", 0, "bool", True),
                 ("coil", 5, "bool", True), ("discrete", 3, "bool", True)]
    points = [{"name": f"p{i}", "table": t, "address": a, "type": ty}
              for i, (t, a, ty, _v) in enumerate(registers)]

    async def test() -> None:
        sim = unit(1, registers)
        async with line([sim], "socket") as (port, _), driver(port, points, max_gap=10) as dev:
            await dev.poll()
            assert sim.requests == Counter({(3, 0, 11): 1, (3, 200, 1): 1, (4, 0, 5): 1,
                                            (1, 0, 6): 1, (2, 3, 1): 1})
            sim.requests.clear()
            async with driver(port, points, max_gap=0, max_registers=4) as narrow:
                sample = await narrow.poll()
            assert values(sample)["p1"] == 2.5
            assert sim.requests == Counter({(3, 0, 3): 1, (3, 3, 2): 1, (3, 10, 1): 1,
                                            (3, 200, 1): 1, (4, 0, 1): 1, (4, 1, 4): 1,
                                            (1, 0, 1): 1, (1, 5, 1): 1, (2, 3, 1): 1})

    run(test)


# -- several units on one RS-485 line ---------------------------------------------------

def test_two_units_on_one_pty_share_one_bus_and_keep_the_inter_frame_silence():
    async def test() -> None:
        u1 = unit(1, [("input", 0, "uint16", 2301), ("input", 1, "uint32", 50000)])
        u2 = unit(2, [("input", 0, "uint16", 2299)])
        async with line([u1, u2]) as (port, endpoint), \
                driver(port, [{"name": "v", "table": "input", "address": 0},
                              {"name": "e", "table": "input", "address": 1,
                               "type": "uint32"}], unit=1, baudrate=9600) as d1, \
                driver(port, [{"name": "v", "table": "input", "address": 0}], unit=2,
                       baudrate=9600) as d2:
            assert d1._bus is d2._bus
            endpoint.silences.clear()
            results = await asyncio.gather(*[d.poll() for d in (d1, d2) for _ in range(5)])
            assert [values(s) for s in results[:5]] == [{"v": 2301, "e": 50000}] * 5
            assert [values(s) for s in results[5:]] == [{"v": 2299}] * 5
            assert u1.requests == Counter({(4, 0, 3): 5})
            assert u2.requests == Counter({(4, 0, 1): 5})
            # t3.5 at 9600 8N1 is 3.65 ms: measured at the device side, from the end of an
            # answer to the first byte of the next request
            assert len(endpoint.silences) == 10
            assert min(endpoint.silences) >= 3.5 * 10 / 9600

    run(test)


def test_a_second_device_with_other_line_settings_on_the_same_port_is_refused():
    async def test() -> None:
        async with line([unit(1, [("holding", 0, "uint16", 1)])]) as (port, _), \
                driver(port, [{"name": "a", "address": 0}], baudrate=9600):
            other = ModbusDriver(ModbusDevice(name="x", driver="modbus", port=port, unit=2,
                                              baudrate=19200, points=[{"name": "a",
                                                                       "address": 0}]))
            with pytest.raises(DeviceError, match=r"9600.*19200"):
                await other.connect()

    run(test)


def test_a_dead_unit_fails_to_connect_and_costs_its_neighbour_at_most_one_timeout():
    async def test() -> None:
        alive = unit(1, [("holding", 0, "uint16", 7)])
        dead = unit(2, [("holding", 0, "uint16", 8)], no_response=1.0)
        async with line([alive, dead]) as (port, _), \
                driver(port, [{"name": "a", "address": 0}], unit=1) as healthy:
            silent = ModbusDriver(ModbusDevice(
                name="dead", driver="modbus", port=port, unit=2, timeout=0.2, retries=3,
                max_gap=0, points=[{"name": "a", "address": 0}, {"name": "b", "address": 50}]))
            try:
                # the line is open, but "connected" means the unit answers
                with pytest.raises(DeviceTimeout):
                    await silent.connect()
                assert dead.requests == Counter({(3, 0, 1): 1})
                # a unit that is not answering gets one attempt per poll, no retries, and
                # the rest of its poll is not asked for
                for _ in range(3):
                    with pytest.raises(DeviceTimeout):
                        await silent.poll()
                assert dead.requests == Counter({(3, 0, 1): 4})
                # the neighbour waits at most one of the dead unit's timeouts for the line
                started = time.monotonic()
                dead_poll = asyncio.create_task(silent.poll())
                await asyncio.sleep(0.01)
                sample = await healthy.poll()
                waited = time.monotonic() - started
                assert values(sample) == {"a": 7}
                assert waited < 0.2 + 0.1
                with pytest.raises(DeviceTimeout):
                    await dead_poll
            finally:
                await silent.close()

    run(test)


def test_a_unit_that_goes_silent_is_retried_once_then_asked_only_once_per_poll():
    async def test() -> None:
        sim = unit(1, [("holding", 0, "uint16", 7)])
        async with line([sim]) as (port, _), \
                driver(port, [{"name": "a", "address": 0}], timeout=0.1, retries=2) as dev:
            await dev.poll()
            sim.faults.no_response = 1.0
            sim.requests.clear()
            with pytest.raises(DeviceTimeout):
                await dev.poll()
            assert sim.requests == Counter({(3, 0, 1): 3})  # it was answering: 1 + 2 retries
            assert dev.errors["timeout"] == 2  # the retried attempts; the last is the poll's
            with pytest.raises(DeviceTimeout):
                await dev.poll()
            assert sim.requests == Counter({(3, 0, 1): 4})  # now known silent: one attempt
            sim.faults.no_response = 0.0
            assert values(await dev.poll()) == {"a": 7}

    run(test)


def test_a_late_answer_from_a_slow_unit_does_not_become_its_neighbours_value():
    async def test() -> None:
        slow = unit(1, [("holding", 0, "uint16", 111)], delay=0.15)
        fast = unit(2, [("holding", 0, "uint16", 222)])
        async with line([slow, fast]) as (port, _), \
                driver(port, [{"name": "a", "address": 0}], unit=1, timeout=0.1,
                       retries=0) as d1, \
                driver(port, [{"name": "a", "address": 0}], unit=2, timeout=0.3) as d2:
            with pytest.raises(DeviceTimeout):
                await d1.poll()
            # unit 1's answer arrives ~50 ms into this exchange; it must be skipped
            for _ in range(3):
                assert values(await d2.poll()) == {"a": 222}
            assert slow.outcomes["late"] == 1
            slow.faults.delay = 0.02  # slow but within its timeout: fine
            assert values(await d1.poll()) == {"a": 111}

    run(test)


# -- garbled answers -----------------------------------------------------------------------

@pytest.mark.parametrize("framing", ["rtu", "ascii"])
def test_crc_errors_are_counted_and_survived_by_retrying(framing):
    async def test() -> None:
        sim = unit(1, [("holding", 0, "uint16", 7)])
        async with line([sim], framing) as (port, _), \
                driver(port, [{"name": "a", "address": 0}], framer=framing, timeout=0.1,
                       retries=4) as dev:
            await dev.poll()
            sim.faults.crc_error = 0.3
            for _ in range(10):
                assert values(await dev.poll()) == {"a": 7}
            assert sim.outcomes["crc_error"] > 0
            assert dev.errors["protocol"] == sim.outcomes["crc_error"]
            sim.faults.crc_error = 1.0
            with pytest.raises(ProtocolError):
                await dev.poll()

    run(test)


# -- exception responses ----------------------------------------------------------------

def test_exception_02_on_a_read_across_a_hole_splits_it_and_remembers_the_layout():
    registers = [("holding", a, "uint16", a + 100) for a in (0, 1, 2, 3, 8, 9)]
    points = [{"name": f"r{a}", "address": a} for a in (0, 1, 2, 3, 8, 9)]

    async def test() -> None:
        sim = unit(1, registers, sparse=True)  # addresses 4..7 do not exist
        async with line([sim], "socket") as (port, _), driver(port, points, max_gap=10) as dev:
            first = await dev.poll()
            assert values(first) == {f"r{a}": a + 100 for a in (0, 1, 2, 3, 8, 9)}
            assert sim.requests == Counter({(3, 0, 10): 1, (3, 0, 4): 1, (3, 8, 2): 1})
            assert dev.errors == Counter({"exception_02": 1})
            sim.requests.clear()
            await dev.poll()
            assert sim.requests == Counter({(3, 0, 4): 1, (3, 8, 2): 1})  # remembered

    run(test)


def test_exception_03_for_a_too_long_read_halves_it_until_the_device_accepts():
    registers = [("input", a, "uint16", a) for a in range(40)]
    points = [{"name": f"r{a}", "table": "input", "address": a} for a in range(40)]

    async def test() -> None:
        sim = unit(1, registers, max_registers=16)
        async with line([sim], "socket") as (port, _), driver(port, points) as dev:
            sample = await dev.poll()
            assert values(sample) == {f"r{a}": a for a in range(40)}
            sim.requests.clear()
            await dev.poll()
            assert sum(sim.requests.values()) == 4
            assert all(count <= 16 for _, _, count in sim.requests)

    run(test)


def test_a_refused_point_is_bad_while_the_rest_of_its_block_stays_good():
    async def test() -> None:
        sim = unit(1, [("holding", 0, "uint16", 1), ("holding", 1, "uint16", 2)], sparse=True)
        points = [{"name": "a", "address": 0}, {"name": "b", "address": 1},
                  {"name": "ghost", "address": 2}]  # not on the device
        async with line([sim], "socket") as (port, _), driver(port, points) as dev:
            sample = await dev.poll()
            assert qualities(sample) == {"a": GOOD, "b": GOOD, "ghost": BAD}
            assert values(sample) == {"a": 1, "b": 2}
            errors_after_first = dev.errors["exception_02"]
            sample = await dev.poll()
            assert qualities(sample) == {"a": GOOD, "b": GOOD, "ghost": BAD}
            assert dev.errors["exception_02"] == errors_after_first + 1  # counted every poll

    run(test)


def test_busy_is_retried_with_backoff_and_the_poll_stays_good():
    async def test() -> None:
        sim = unit(1, [("holding", 0, "uint16", 7)], exception=6, exception_count=2)
        async with line([sim], "socket") as (port, _), \
                driver(port, [{"name": "a", "address": 0}], retries=2) as dev:
            sample = await dev.poll()
            assert values(sample) == {"a": 7}
            assert sim.requests == Counter({(3, 0, 1): 3})
            assert dev.errors == Counter({"exception_06": 2})

    run(test)


def test_busy_beyond_the_retries_marks_the_block_bad_and_other_blocks_still_publish():
    async def test() -> None:
        sim = unit(1, [("holding", 0, "uint16", 7), ("input", 0, "uint16", 9)],
                   exception=6, exception_count=2)
        points = [{"name": "h", "address": 0}, {"name": "i", "table": "input", "address": 0}]
        async with line([sim], "socket") as (port, _), driver(port, points, retries=1) as dev:
            sample = await dev.poll()
            assert qualities(sample) == {"h": BAD, "i": GOOD}
            assert values(sample) == {"i": 9}
            assert dev.errors == Counter({"exception_06": 2})

    run(test)


@pytest.mark.parametrize("code", [1, 4, 11])
def test_other_exception_codes_mark_the_block_bad_and_are_counted_by_code(code):
    async def test() -> None:
        sim = unit(1, [("holding", 0, "uint16", 7), ("coil", 0, "bool", True)],
                   exception=code, exception_count=1)
        points = [{"name": "h", "address": 0}, {"name": "c", "table": "coil", "address": 0}]
        async with line([sim], "socket") as (port, _), driver(port, points, retries=3) as dev:
            sample = await dev.poll()  # coils are read first: they get the exception
            assert qualities(sample) == {"c": BAD, "h": GOOD}
            assert dev.errors == Counter({f"exception_{code:02X}": 1})
            assert sum(sim.requests.values()) == 2  # not retried
            assert qualities(await dev.poll()) == {"c": GOOD, "h": GOOD}

    run(test)


def test_a_unit_refusing_everything_still_answers_so_the_poll_publishes_bad_values():
    async def test() -> None:
        sim = unit(1, [("holding", 0, "uint16", 7)], exception=4)
        async with line([sim], "socket") as (port, _), \
                driver(port, [{"name": "a", "address": 0}]) as dev:
            sample = await dev.poll()
            assert qualities(sample) == {"a": BAD}
            assert sample.ts_ms > 0

    run(test)


def test_a_block_lost_mid_poll_is_bad_and_the_rest_of_that_poll_is_not_asked():
    async def test() -> None:
        sim = unit(1, [("coil", 0, "bool", True), ("holding", 0, "uint16", 7),
                       ("input", 0, "uint16", 9)])
        points = [{"name": "c", "table": "coil", "address": 0}, {"name": "h", "address": 0},
                  {"name": "i", "table": "input", "address": 0}]
        async with line([sim]) as (port, _), driver(port, points, timeout=0.1,
                                                    retries=0) as dev:
            original = sim.faults

            class SilentAfterCoils(Faults):  # answers the coil read, then goes quiet
                @property  # type: ignore[override]
                def no_response(self) -> float:
                    return 1.0 if sum(sim.requests.values()) > 1 else 0.0

                @no_response.setter
                def no_response(self, value: float) -> None:
                    pass

            sim.faults = SilentAfterCoils()
            sample = await dev.poll()
            assert qualities(sample) == {"c": GOOD, "h": BAD, "i": BAD}
            assert dev.errors == Counter({"timeout": 1})
            assert (4, 0, 1) not in sim.requests
            sim.faults = original

    run(test)


# -- writes (downlink) ---------------------------------------------------------------------

def test_writes_use_fc5_fc6_fc16_and_land_in_the_registers():
    async def test() -> None:
        sim = unit(1, [("holding", 0, "int16", 0), ("holding", 1, "float32", 0.0, "CDAB"),
                       ("holding", 3, "uint16", 0b1000_0000_0000_0001),
                       ("coil", 0, "bool", False)])
        points = [{"name": "sp", "address": 0, "type": "int16", "writable": True},
                  {"name": "f", "address": 1, "type": "float32", "order": "CDAB",
                   "writable": True},
                  {"name": "flag", "address": 3, "type": "bool", "bit": 4, "writable": True},
                  {"name": "run", "table": "coil", "address": 0, "type": "bool",
                   "writable": True}]
        async with line([sim], "socket") as (port, _), driver(port, points) as dev:
            await dev.write("sp", -5)
            await dev.write("f", 123.456)
            await dev.write("flag", True)
            await dev.write("run", True)
            assert sim.words["holding"][0] == 0xFFFB
            assert (sim.words["holding"][1], sim.words["holding"][2]) == (0xE979, 0x42F6)
            assert sim.words["holding"][3] == 0b1000_0000_0001_0001  # other bits kept
            assert sim.bits["coil"][0] is True
            assert {fc for fc, _, _ in sim.requests} == {3, 5, 6, 16}
            assert (16, 1, 2) in sim.requests and (6, 0, 1) in sim.requests
            assert values(await dev.poll()) == {"sp": -5, "f": 123.456, "flag": True,
                                                "run": True}
            await dev.write("flag", False)
            assert sim.words["holding"][3] == 0b1000_0000_0000_0001

    run(test)


def test_writes_that_cannot_be_made_are_refused_before_reaching_the_device():
    async def test() -> None:
        sim = unit(1, [("holding", 0, "int16", 0), ("input", 0, "uint16", 0)])
        points = [{"name": "sp", "address": 0, "type": "int16", "writable": True},
                  {"name": "ro", "address": 0, "type": "int16"},
                  {"name": "in", "table": "input", "address": 0, "writable": True}]
        async with line([sim], "socket") as (port, _), driver(port, points) as dev:
            with pytest.raises(WriteRefused, match="does not fit"):
                await dev.write("sp", 40000)
            with pytest.raises(WriteRefused, match="not writable"):
                await dev.write("ro", 1)
            with pytest.raises(WriteRefused, match="read-only"):
                await dev.write("in", 1)
            with pytest.raises(WriteRefused, match="not writable"):
                await dev.write("nope", 1)
            assert not sim.requests

    run(test)


def test_a_write_the_device_refuses_raises_its_exception_code():
    async def test() -> None:
        sim = unit(1, [("holding", 0, "uint16", 0)], exception=2)
        async with line([sim], "socket") as (port, _), \
                driver(port, [{"name": "sp", "address": 0, "writable": True}]) as dev:
            with pytest.raises(ExceptionResponse, match=r"02 \(illegal data address\)") as caught:
                await dev.write("sp", 1)
            assert caught.value.kind == "exception_02"

    run(test)


def test_the_bus_is_closed_when_its_last_device_detaches():
    async def test() -> None:
        async with line([unit(1, [("holding", 0, "uint16", 1)]),
                         unit(2, [("holding", 0, "uint16", 2)])]) as (port, _):
            async with driver(port, [{"name": "a", "address": 0}]) as d1:
                async with driver(port, [{"name": "a", "address": 0}], unit=2) as d2:
                    assert d1._bus is d2._bus
                    assert d1._bus.users == 2
                bus = d1._bus
                assert bus.users == 1 and bus.connected
                assert values(await d1.poll()) == {"a": 1}
            assert bus not in Bus._open.values()
            assert not bus.connected

    run(test)


def test_a_shared_bus_reopens_a_usb_identity_on_its_new_tty_while_devices_stay_attached(
        monkeypatch):
    """The bus outlives its users' reconnects on a shared line, so it resolves the port
    again itself whenever it has to reopen it."""
    from edge_agent_drivers.modbus import bus as bus_module

    async def test() -> None:
        async with line([unit(1, [("holding", 0, "uint16", 111)])]) as (first, _), \
                line([unit(1, [("holding", 0, "uint16", 222)])]) as (second, _):
            now = {"tty": first}
            monkeypatch.setattr(bus_module, "resolve_port", lambda port: now["tty"])
            _UNITS_ON["usb:0403:6001:FT1"] = _UNITS_ON[first]
            async with driver("usb:0403:6001:FT1", [{"name": "a", "address": 0}]) as dev:
                assert values(await dev.poll()) == {"a": 111}
                dev._bus.client.close()  # the adapter went away: the transport is gone
                now["tty"] = second
                with pytest.raises(DeviceError):
                    await dev.poll()
                await dev.connect()  # what the runtime does next; the bus is still shared
                assert values(await dev.poll()) == {"a": 222}

    run(test)
