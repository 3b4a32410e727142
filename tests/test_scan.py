"""`edge-agent scan`: stable identities and a config snippet per serial port and USB device.

USB devices are the simulated ones behind pyusb's backend interface (env, as the agent
uses). Serial ports come from pyserial's listing, replaced at that one call (sysfs cannot be
populated without root), with a real by-id directory of symlinks to real ptys.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import yaml
from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

from edge_agent import config as config_mod
from edge_agent import ports, scan
from edge_agent_simulators.usb.bus import SimulatedBus
from tests.helpers import run_cli


def snippets(output: str) -> list:
    """The YAML blocks printed under each `config` line."""
    blocks, current = [], None
    for line in output.splitlines():
        if line.strip().startswith("config"):
            current = []
            blocks.append(current)
        elif current is not None and line.startswith("      "):
            current.append(line[6:])
        else:
            current = None
    return [yaml.safe_load("\n".join(block)) for block in blocks]


def test_scan_lists_simulated_usb_devices_with_ids_and_a_valid_config_snippet(tmp_path):
    bus = SimulatedBus(tmp_path)
    bus.add("th", "thermo-hygrometer", serial="TH-0001", bus=3, ports=[1, 4])
    bus.add("lg", "bulk-logger", bus=3, ports=[2])
    bus.add("gone", "bulk-logger", serial="NOT-HERE", plugged=False)

    result = run_cli("scan", env=bus.env)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1a86:e025  PCsensor (simulated) TEMPerHUM  serial TH-0001  bus path 3-1.4" in out
    assert "interface 0: HID, endpoints 0x81 (interrupt IN), 0x01 (interrupt OUT)" in out
    assert "interface 0: vendor, endpoints 0x82 (bulk IN), 0x02 (bulk OUT)" in out
    assert "NOT-HERE" not in out  # unplugged devices are not listed
    usb_devices = [s[0] for s in snippets(out) if isinstance(s, list)]
    assert [(d["vid"], d["pid"], d.get("serial"), d.get("bus_path"), d["endpoint"])
            for d in usb_devices] == [("0x1a86", "0xe025", "TH-0001", None, "0x81"),
                                      ("0x1209", "0xda7a", None, "3-2", "0x82")]
    config = config_mod.validate({"devices": usb_devices})  # the snippet is a valid device
    assert config.devices[1].bus_path == "3-2"


def usb_port(device: str, vid: int, pid: int, serial: str | None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial
    info.product = "FT232R USB UART"
    info.apply_usb_info()
    return info


@pytest.fixture
def no_usb(tmp_path, monkeypatch):
    bus = SimulatedBus(tmp_path / "usb")  # a bus with nothing on it
    for key, value in bus.env.items():
        monkeypatch.setenv(key, value)
    ports.usb_backend.cache_clear()
    yield
    ports.usb_backend.cache_clear()


def test_serial_ports_show_by_id_links_and_prefer_the_usb_identity(tmp_path, monkeypatch, no_usb):
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    try:
        tty_a, tty_b = os.ttyname(slave_a), os.ttyname(slave_b)
        by_id = tmp_path / "by-id"
        by_id.mkdir()
        (by_id / "usb-FTDI_FT232R_USB_UART-if00-port0").symlink_to(tty_b)
        monkeypatch.setattr(scan, "BY_ID_DIR", by_id)
        monkeypatch.setattr(list_ports, "comports", lambda include_links=False: [
            usb_port(tty_a, 0x0403, 0x6001, "A50285BI"), usb_port(tty_b, 0x0403, 0x6001, None)])
        out = io.StringIO()

        assert scan.scan(out) == 0

        text = out.getvalue()
        assert f"{tty_a}  usb 0403:6001 serial A50285BI  FT232R USB UART" in text
        assert f"{tty_b}  usb 0403:6001 (no serial number)" in text
        assert f"by-id: {by_id}/usb-FTDI_FT232R_USB_UART-if00-port0" in text
        assert snippets(text)[:2] == [
            {"port": "usb:0403:6001:A50285BI"},  # survives a move to another USB port
            {"port": f"{by_id}/usb-FTDI_FT232R_USB_UART-if00-port0"}]
        assert "USB devices\n  none found" in text
    finally:
        for fd in (master_a, slave_a, master_b, slave_b):
            os.close(fd)


def test_nothing_attached_says_so_and_exits_0(monkeypatch, no_usb):
    monkeypatch.setattr(list_ports, "comports", lambda include_links=False: [])
    out = io.StringIO()
    assert scan.scan(out) == 0
    assert out.getvalue().splitlines() == [
        "Serial ports", "  none found", "USB devices", "  none found",
        "nothing to configure: no serial ports or USB devices were found"]


def test_an_unusable_usb_backend_is_reported_and_scan_still_exits_0(tmp_path: Path):
    result = run_cli("scan", env={"EDGE_AGENT_USB_BACKEND": "no_such_module:backend"})
    assert result.returncode == 0
    assert "cannot list USB devices: EDGE_AGENT_USB_BACKEND=no_such_module:backend could not " \
           "be loaded" in result.stdout
