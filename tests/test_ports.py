"""Stable device identity: `usb:VID:PID[:SERIAL]` resolved to today's tty at every connect.

pyserial's port listing reads sysfs on Linux, which a test cannot populate without root, and
this machine has no USB bus. So `serial.tools.list_ports.comports` is the one boundary
replaced here: it returns pyserial's own ListPortInfo records, as it does for USB adapters.
Everything from there on (the resolver, the Modbus bus, the agent, Mosquitto) is real, and
the ttys are real pseudo-terminals with a Modbus RTU simulator behind them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

from edge_agent import config as config_mod
from edge_agent.errors import DeviceDisconnected, DeviceError
from edge_agent.ports import parse_usb_identity, resolve_port
from edge_agent.runtime import Agent
from tests.helpers import SimulatorThread

FTDI = (0x0403, 0x6001)


def usb_port(device: str, vid: int, pid: int, serial: str | None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial
    info.apply_usb_info()
    return info


@pytest.fixture
def attached(monkeypatch: pytest.MonkeyPatch) -> list[ListPortInfo]:
    """The ports pyserial reports; tests change the list to plug and unplug adapters."""
    ports: list[ListPortInfo] = []
    monkeypatch.setattr(list_ports, "comports", lambda include_links=False: list(ports))
    return ports


def test_vid_pid_alone_resolves_when_one_adapter_matches(attached):
    attached += [usb_port("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP1"),
                 usb_port("/dev/ttyUSB1", *FTDI, "A50285BI")]
    assert resolve_port("usb:0403:6001") == "/dev/ttyUSB1"


def test_serial_number_chooses_between_identical_adapters_case_insensitively(attached):
    attached += [usb_port("/dev/ttyUSB0", *FTDI, "AAA1"), usb_port("/dev/ttyUSB1", *FTDI, "BBB2")]
    assert resolve_port("usb:0403:6001:bbb2") == "/dev/ttyUSB1"
    assert resolve_port("usb:0403:6001:AAA1") == "/dev/ttyUSB0"


def test_identical_adapters_without_a_serial_are_ambiguous_with_a_hint(attached):
    attached += [usb_port("/dev/ttyUSB0", *FTDI, "AAA1"), usb_port("/dev/ttyUSB1", *FTDI, "BBB2")]
    with pytest.raises(DeviceError, match=r"usb:0403:6001 matches 2 ports .*AAA1.*BBB2.*"
                                          r"add the serial number"):
        resolve_port("usb:0403:6001")


def test_no_match_is_a_disconnect_naming_what_is_attached(attached):
    attached.append(usb_port("/dev/ttyUSB0", *FTDI, "AAA1"))
    with pytest.raises(DeviceDisconnected, match=r"no serial port matches usb:0403:6001:ZZZ; "
                                                 r"0403:6001 ports attached: /dev/ttyUSB0"):
        resolve_port("usb:0403:6001:ZZZ")
    attached.clear()
    with pytest.raises(DeviceDisconnected, match=r"^no serial port matches usb:0403:6001:ZZZ$"):
        resolve_port("usb:0403:6001:ZZZ")


@pytest.mark.parametrize("port", ["/dev/serial/by-id/usb-FTDI_FT232R_A50285BI-if00-port0",
                                  "/dev/ttyS0", "socket://127.0.0.1:4001", "tcp://10.0.0.5:502"])
def test_paths_and_urls_pass_unchanged_without_listing_ports(monkeypatch, port):
    monkeypatch.setattr(list_ports, "comports", lambda *a: pytest.fail("listed ports"))
    assert resolve_port(port) == port


@pytest.mark.parametrize("port", ["usb:0403", "usb:xyz:6001", "usb:10000:1"])
def test_malformed_usb_identity_is_a_clear_error(port):
    with pytest.raises(DeviceError, match="usb:"):
        resolve_port(port)


def test_parse_keeps_colons_inside_the_serial_number():
    assert parse_usb_identity("usb:0403:6001:AB:CD") == (0x0403, 0x6001, "AB:CD")


# -- end to end: a Modbus RTU device found by USB identity, across a "replug" ------------------

def rtu_sim(value: int) -> SimulatorThread:
    return SimulatorThread({"devices": [{
        "name": "meter", "kind": "modbus-rtu", "interval": 0.1,
        "units": [{"unit": 1, "registers": [{"name": "level", "address": 0, "value": value}]}]}]})


class InProcessAgent:
    """The agent on a loop in a thread, so it sees this process's port listing."""

    def __init__(self, config: dict) -> None:
        self.agent = Agent(config_mod.validate(config))
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        ready = threading.Event()

        async def main() -> None:
            self.stop_event = asyncio.Event()
            ready.set()
            await self.agent.run(self.stop_event)

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),),
                                       daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


@pytest.fixture
def sims() -> Iterator[list[SimulatorThread]]:
    started: list[SimulatorThread] = []
    yield started
    for sim in started:
        sim.close()


def test_modbus_port_by_usb_identity_follows_the_device_to_its_new_tty(
        attached, mosquitto, subscriber, sims):
    first = rtu_sim(111)
    sims.append(first)
    first_tty = first.by_name("meter").where
    attached.append(usb_port(first_tty, *FTDI, "FT1"))
    device = {"name": "meter", "driver": "modbus", "port": "usb:0403:6001:FT1", "unit": 1,
              "interval": 0.1, "timeout": 0.3, "points": [{"name": "level", "address": 0}]}
    agent = InProcessAgent({"node": "n3", "mqtt": {"url": mosquitto.url},
                            "http": {"enabled": False}, "devices": [device]})
    try:
        subscriber.wait_for("n3/meter/telemetry", where=lambda m: m["readings"][0]["value"] == 111)

        # the adapter's next enumeration, on another tty (opened now, so the number differs)
        second = rtu_sim(222)
        sims.append(second)
        second_tty = second.by_name("meter").where
        assert second_tty != first_tty

        attached.clear()  # unplugged: the tty goes away and the identity resolves to nothing
        first.close()
        sims.remove(first)
        subscriber.wait_for("n3/meter/status", where=lambda m: "no serial port matches "
                            "usb:0403:6001:FT1" in (m.get("error") or ""))

        attached.append(usb_port(second_tty, *FTDI, "FT1"))  # replugged
        subscriber.wait_for("n3/meter/telemetry", where=lambda m: m["readings"][0]["value"] == 222,
                            timeout=20)
    finally:
        agent.stop()
