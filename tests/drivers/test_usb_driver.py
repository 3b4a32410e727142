"""The USB driver's pyusb calls against simulated devices behind usb.backend.IBackend.

The driver code is the production code; only pyusb's backend is the simulator's. These run
in-process so they can look at the simulated device's state (kernel driver, claims).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import config as config_mod
from edge_agent import ports
from edge_agent.errors import ConfigError, DeviceDisconnected, DeviceError, DeviceTimeout
from edge_agent.model import BAD, GOOD
from edge_agent_drivers.usb.config import UsbDevice
from edge_agent_drivers.usb.driver import UsbDriver
from edge_agent_simulators.usb.bus import SimulatedBus


@pytest.fixture
def usb_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedBus]:
    bus = SimulatedBus(tmp_path)
    for key, value in bus.env.items():
        monkeypatch.setenv(key, value)
    ports.usb_backend.cache_clear()  # the backend reads the spec when it is built
    yield bus
    ports.usb_backend.cache_clear()
    bus.close()


def run(coro):
    return asyncio.run(coro)


def driver_for(config: dict) -> UsbDriver:
    return UsbDriver(UsbDevice.model_validate(config))


async def connect_poll_close(driver: UsbDriver):
    await driver.connect()
    try:
        return await driver.poll()
    finally:
        await driver.close()


def values(sample) -> dict:
    return {r.metric: (r.value, r.quality) for r in sample.readings}


def test_hid_thermometer_request_on_out_endpoint_then_interrupt_report(usb_bus):
    config = usb_bus.add("th-1", "thermo-hygrometer", serial="TH-1", temperature=21.5,
                         humidity=40.25)
    sample = run(connect_poll_close(driver_for(config)))
    # raw values; scaling (0.01) is the core's job
    assert values(sample) == {"temperature": (2150, GOOD), "humidity": (4025, GOOD)}


def test_kernel_driver_is_detached_before_claiming_and_refused_when_told_not_to(usb_bus):
    config = usb_bus.add("th-1", "thermo-hygrometer", temperature=20)
    backend = ports.usb_backend()
    device = backend.devices[0]
    run(connect_poll_close(driver_for(config)))
    assert device.detached == {0}

    usb_bus.plug("th-1")  # replugged: usbhid binds again
    backend.enumerate_devices()
    assert device.detached == set()
    with pytest.raises(DeviceError, match="kernel driver holds interface 0"):
        run(connect_poll_close(driver_for({**config, "detach_kernel_driver": False})))


@pytest.mark.parametrize("via", ["set_report", "control"])
def test_request_as_hid_set_report_or_raw_control_transfer(usb_bus, via):
    config = usb_bus.add("th-1", "thermo-hygrometer", temperature=-3.5, humidity=88)
    config["request_via"] = via
    if via == "control":
        config["control"] = {"request_type": "0x21", "request": "0x09", "value": "0x0200"}
    sample = run(connect_poll_close(driver_for(config)))
    assert values(sample) == {"temperature": (-350, GOOD), "humidity": (8800, GOOD)}


def test_report_read_by_hid_get_report_without_a_request(usb_bus):
    config = usb_bus.add("th-1", "thermo-hygrometer", temperature=30, humidity=50)
    del config["request"]
    config["read_via"] = "get_report"
    sample = run(connect_poll_close(driver_for(config)))
    assert values(sample) == {"temperature": (3000, GOOD), "humidity": (5000, GOOD)}


def test_no_request_and_no_report_is_a_timeout_not_a_stale_value(usb_bus):
    config = usb_bus.add("th-1", "thermo-hygrometer", temperature=30)
    del config["request"]
    config["timeout"] = 0.05
    with pytest.raises(DeviceTimeout, match="no report from 1a86:e025"):
        run(connect_poll_close(driver_for(config)))


def test_bulk_logger_record_with_little_endian_fields_and_a_flag_bit(usb_bus):
    config = usb_bus.add("lg-1", "bulk-logger", serial="LG-7", voltage=3.75,
                         temperature=-12.3, battery_low=True, uptime=86400)
    driver = driver_for(config)

    async def two_polls():
        await driver.connect()
        try:
            return await driver.poll(), await driver.poll()
        finally:
            await driver.close()

    first, second = run(two_polls())
    assert values(first) == {"record": (1, GOOD), "voltage": (3.75, GOOD),
                             "temperature": (-123, GOOD), "battery_low": (True, GOOD),
                             "uptime": (86400, GOOD)}
    assert values(second)["record"] == (2, GOOD)


def test_a_short_error_reply_is_published_bad_not_decoded_from_garbage(usb_bus):
    config = usb_bus.add("lg-1", "bulk-logger")
    config["request"] = "a5 99"  # an unknown command: the logger answers A5 FF
    sample = run(connect_poll_close(driver_for(config)))
    assert all(quality == BAD and value is None for value, quality in values(sample).values())


def test_serial_number_picks_one_of_identical_devices_and_ambiguity_is_a_clear_error(usb_bus):
    usb_bus.add("lg-a", "bulk-logger", serial="A1", temperature=1.0)
    config_b = usb_bus.add("lg-b", "bulk-logger", serial="B2", temperature=2.0)
    ports.usb_backend.cache_clear()
    sample = run(connect_poll_close(driver_for(config_b)))
    assert values(sample)["temperature"] == (20, GOOD)

    anonymous = {k: v for k, v in config_b.items() if k != "serial"}
    with pytest.raises(DeviceError, match=r"2 USB devices match 1209:da7a: .*serial A1.*serial B2"
                                          r".*set `serial` or `bus_path`"):
        run(connect_poll_close(driver_for(anonymous)))


def test_bus_path_picks_the_device_on_that_hub_port(usb_bus):
    usb_bus.add("lg-a", "bulk-logger", bus=1, ports=[1, 4], temperature=1.0)
    config = usb_bus.add("lg-b", "bulk-logger", bus=1, ports=[1, 5], temperature=2.0)
    ports.usb_backend.cache_clear()
    chosen = {k: v for k, v in config.items() if k != "serial"} | {"bus_path": "1-1.4"}
    assert values(run(connect_poll_close(driver_for(chosen))))["temperature"] == (10, GOOD)


def test_unplug_fails_the_poll_as_disconnected_and_replug_is_found_again(usb_bus):
    config = usb_bus.add("th-1", "thermo-hygrometer", serial="TH-1", temperature=25)
    driver = driver_for(config)

    async def scenario():
        await driver.connect()
        assert values(await driver.poll())["temperature"] == (2500, GOOD)
        usb_bus.unplug("th-1")
        with pytest.raises(DeviceDisconnected, match="disconnected"):
            await driver.poll()
        await driver.close()
        with pytest.raises(DeviceDisconnected, match="1a86:e025 serial TH-1 is not attached"):
            await driver.connect()
        usb_bus.plug("th-1")
        await driver.connect()
        sample = await driver.poll()
        await driver.close()
        return sample

    assert values(run(scenario()))["temperature"] == (2500, GOOD)


def test_wrong_endpoint_names_the_endpoints_the_interface_has(usb_bus):
    config = usb_bus.add("lg-1", "bulk-logger") | {"endpoint": "0x83"}
    with pytest.raises(DeviceError, match=r"0x83 is not an interrupt or bulk IN endpoint .*"
                                          r"0x82 \(bulk IN\), 0x02 \(bulk OUT\)"):
        run(connect_poll_close(driver_for(config)))


def test_missing_backend_is_a_device_error_naming_the_env(usb_bus, monkeypatch):
    monkeypatch.setenv("EDGE_AGENT_USB_BACKEND", "no_such_module:get_backend")
    ports.usb_backend.cache_clear()
    with pytest.raises(DeviceError, match="EDGE_AGENT_USB_BACKEND=no_such_module"):
        run(connect_poll_close(driver_for(usb_bus.add("lg-1", "bulk-logger"))))


@pytest.mark.parametrize(("change", "problem"), [
    ({"endpoint": "0x01"}, "devices[0].endpoint: 0x01 is an OUT endpoint"),
    ({"vid": "zz"}, "devices[0].vid: 'zz' is not a hex number"),
    ({"pid": 0x10000}, "devices[0].pid: Input should be less than or equal to 65535"),
    ({"request": "01 8"}, "devices[0].request: '01 8' is not hex bytes"),
    ({"request_via": "control"}, "request_via: control needs a `control` transfer"),
    ({"fields": [{"name": "t", "offset": 0, "type": "int12"}]}, "devices[0].fields[0].type"),
    ({"fields": [{"name": "t", "offset": 0, "type": "int16", "bit": 3}]},
     "bit applies to type bool only"),
    ({"colour": "red"}, "devices[0].colour: unknown key"),
])
def test_invalid_usb_config_is_refused_with_the_field_path(change, problem):
    device = {"name": "th", "driver": "usb", "vid": "1a86", "pid": "0xe025", "endpoint": 0x81,
              "fields": [{"name": "t", "offset": 2, "type": "int16"}], **change}
    with pytest.raises(ConfigError) as caught:
        config_mod.validate({"devices": [device]})
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_hex_strings_and_ints_both_give_the_ids():
    config = config_mod.validate({"devices": [{
        "name": "th", "driver": "usb", "vid": "1a86", "pid": 0xE025, "endpoint": "81",
        "fields": [{"name": "t", "offset": 2, "type": "int16"}]}]})
    device = config.devices[0]
    assert (device.vid, device.pid, device.endpoint) == (0x1A86, 0xE025, 0x81)
