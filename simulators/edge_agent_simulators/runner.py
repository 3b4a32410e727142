"""Starts the simulators of a spec and says where a driver reaches each one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.decode import register_count
from edge_agent_simulators.can.slcan import start_slcan
from edge_agent_simulators.iec62056 import start_iec62056
from edge_agent_simulators.line import start_csv_sensor, start_scale
from edge_agent_simulators.mbus import start_mbus
from edge_agent_simulators.modbus import Faults, ModbusSimulator, PtyEndpoint, Register, Unit
from edge_agent_simulators.nmea import start_nmea
from edge_agent_simulators.running import Running
from edge_agent_simulators.spec import DeviceSpec, RegisterSpec, SimSpec, UnitSpec
from edge_agent_simulators.usb.bus import start_usb
from edge_agent_simulators.waves import Wave

Starter = Callable[[DeviceSpec, dict[str, Running]], Awaitable[Running]]


def _units(spec: DeviceSpec) -> dict[int, Unit]:
    units = {}
    for u in spec.units:
        registers = [Register(r.table, r.address, r.type, r.order, _scaled_wave(r), r.length)
                     for r in _with_profile(u)]
        units[u.unit] = Unit(u.unit, registers, Faults.from_spec(u.faults),
                             identification=u.identification)
    return units


def _with_profile(unit: UnitSpec) -> list[RegisterSpec]:
    if unit.profile is None:
        return unit.registers
    from edge_agent_simulators.profiles import register_specs

    own = {r.name: r for r in unit.registers}
    served = [own.pop(r.name, r) for r in register_specs(unit.profile)]
    return served + list(own.values())


def _scaled_wave(register: Any) -> Wave:
    """The spec gives engineering values; the device holds raw = value / scale."""
    wave = Wave(register.value)
    if register.scale != 1.0:
        inner = wave.value
        wave.value = lambda: inner() / register.scale  # type: ignore[method-assign]  # wraps it
    return wave


def _points(spec: DeviceSpec, unit_id: int) -> list[dict[str, Any]]:
    points = []
    for u in spec.units:
        if u.unit != unit_id:
            continue
        for r in u.registers:
            point: dict[str, Any] = {"name": r.name, "table": r.table, "address": r.address,
                                     "type": r.type}
            if r.type != "string" and register_count(r.type) > 1:
                point["order"] = r.order  # explicit wherever a word order matters
            if r.type == "string":
                point["length"] = r.length
            if r.scale != 1.0:
                point["scale"] = r.scale
            if r.unit:
                point["unit"] = r.unit
            if r.writable:
                point["writable"] = True
            points.append(point)
    return points


def _points_or_profile(spec: DeviceSpec, unit_id: int) -> dict[str, Any]:
    """The device keys describing a unit: its profile's name (plus any registers of its
    own as points), or its points."""
    unit = next(u for u in spec.units if u.unit == unit_id)
    points = _points(spec, unit_id)
    if unit.profile is None:
        return {"points": points}
    return {"profile": unit.profile, **({"points": points} if points else {})}


async def start_modbus_tcp(spec: DeviceSpec, running: dict[str, Running]) -> Running:
    units = _units(spec)
    host, _, port = spec.listen.rpartition(":")
    server = await ModbusSimulator(units, "socket").serve_tcp(host, int(port))
    bound = server.sockets[0].getsockname()[1]
    first = next(iter(units))
    config = {"name": spec.name, "driver": "modbus", "port": f"tcp://{host}:{bound}",
              "unit": first, "interval": spec.interval, **_points_or_profile(spec, first)}
    return Running(spec.name, f"tcp://{host}:{bound}", config, server, units)


async def start_modbus_serial(spec: DeviceSpec, running: dict[str, Running]) -> Running:
    units = _units(spec)
    framing = "ascii" if spec.kind == "modbus-ascii" else "rtu"
    if spec.shares_port_with:  # another unit on the same RS-485 line
        owner = running[spec.shares_port_with]
        owner.units.update(units)
        endpoint, path = None, owner.where
    else:
        endpoint = PtyEndpoint(ModbusSimulator(units, framing))
        path = endpoint.path
    first = next(iter(units))
    config = {"name": spec.name, "driver": "modbus", "port": path, "unit": first,
              "baudrate": 9600, "interval": spec.interval, **_points_or_profile(spec, first)}
    if framing == "ascii":
        config["framer"] = "ascii"
    return Running(spec.name, path, config, endpoint, units)


STARTERS: dict[str, Starter] = {
    "modbus-tcp": start_modbus_tcp,
    "modbus-rtu": start_modbus_serial,
    "modbus-ascii": start_modbus_serial,
    "nmea": start_nmea,
    "scale": start_scale,
    "csv-sensor": start_csv_sensor,
    "usb": start_usb,
    "iec62056": start_iec62056,
    "slcan": start_slcan,
    "mbus": start_mbus,
}


async def start(spec: SimSpec) -> list[Running]:
    running: dict[str, Running] = {}
    for device in spec.devices:
        starter = STARTERS.get(device.kind)
        if starter is None:
            raise ValueError(f"simulator kind '{device.kind}' is not one of {', '.join(STARTERS)}")
        running[device.name] = await starter(device, running)
    return list(running.values())


def agent_config(sims: list[Running], broker_url: str = "mqtt://127.0.0.1:1883") -> dict[str, Any]:
    return {"mqtt": {"url": broker_url}, "devices": [s.device_config for s in sims]}


def agent_env(sims: list[Running]) -> dict[str, str]:
    """The environment variables an agent needs to reach all of these simulators."""
    env: dict[str, str] = {}
    for sim in sims:
        env.update(sim.env)
    return env
