"""The Modbus driver: sequences pymodbus requests for a device's read plan.

Devices on the same serial port (several units on one RS-485 line) share one `Bus`, which
owns the connection and serialises requests, so two units never talk over each other.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from edge_agent_drivers.modbus.codec import BlockDecoder
from edge_agent_drivers.modbus.config import ModbusDevice, ModbusPoint
from edge_agent_drivers.modbus.plan import plan
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from edge_agent.decode import encode_value
from edge_agent.driver import Driver
from edge_agent.errors import DeviceDisconnected, DeviceError, DeviceTimeout, WriteRefused
from edge_agent.model import PointSpec, Sample, now_ms

_FRAMERS = {"rtu": FramerType.RTU, "ascii": FramerType.ASCII, "socket": FramerType.SOCKET}


class ModbusException_(DeviceError):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int, function: str) -> None:
        super().__init__(f"exception code {code:02d} on {function}")
        self.code = code
        self.kind = f"exception_{code:02d}"


class Bus:
    """One connection to one port, shared by every device configured on it."""

    _open: ClassVar[dict[str, Bus]] = {}

    def __init__(self, config: ModbusDevice) -> None:
        self.key = config.port
        self.lock = asyncio.Lock()
        self.users = 0
        framer = _FRAMERS[config.framer or ("socket" if config.is_tcp else "rtu")]
        if config.is_tcp:
            host, _, port = config.port.removeprefix("tcp://").rpartition(":")
            self.client: Any = AsyncModbusTcpClient(
                host or "127.0.0.1", port=int(port or 502), framer=framer,
                timeout=config.timeout, retries=config.retries, reconnect_delay=0)
        else:
            self.client = AsyncModbusSerialClient(
                config.port, framer=framer, baudrate=config.baudrate, parity=config.parity,
                stopbits=config.stopbits, bytesize=config.bytesize, timeout=config.timeout,
                retries=config.retries, reconnect_delay=0)

    @classmethod
    def attach(cls, config: ModbusDevice) -> Bus:
        bus = cls._open.get(config.port)
        if bus is None:
            bus = cls._open[config.port] = cls(config)
        bus.users += 1
        return bus

    def detach(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self._open.pop(self.key, None)
            self.client.close()

    async def ensure_connected(self) -> None:
        async with self.lock:
            if not self.client.connected and not await self.client.connect():
                raise DeviceDisconnected(f"cannot open {self.key}")


class ModbusDriver(Driver):
    config_model = ModbusDevice
    shares_port = True

    def __init__(self, config: ModbusDevice) -> None:
        super().__init__(config)
        self.config: ModbusDevice = config
        self.blocks = [BlockDecoder(b) for b in plan(
            config.points, config.max_registers, config.max_bits, config.max_gap)]
        self._points = {p.name: p for p in config.points}
        self._bus: Bus | None = None

    def points(self) -> list[PointSpec]:
        return [PointSpec(p.name, p.unit, p.scale, p.offset, p.writable, p.min, p.max)
                for p in self.config.points]

    async def connect(self) -> None:
        if self._bus is None:
            self._bus = Bus.attach(self.config)
        await self._bus.ensure_connected()

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.detach()
            self._bus = None

    async def poll(self) -> Sample:
        bus = self._bus
        if bus is None or not bus.client.connected:
            raise DeviceDisconnected("not connected")
        readings = []
        ts = now_ms()
        async with bus.lock:
            for decoder in self.blocks:
                block = decoder.block
                response = await self._request(bus, block.table, block.address, block.count)
                values = response.bits if block.is_bits else response.registers
                readings += decoder.decode(values)
        return Sample(ts, readings)

    async def _request(self, bus: Bus, table: str, address: int, count: int) -> Any:
        client, unit = bus.client, self.config.unit
        try:
            if table == "holding":
                response = await client.read_holding_registers(address, count=count, device_id=unit)
            elif table == "input":
                response = await client.read_input_registers(address, count=count, device_id=unit)
            elif table == "coil":
                response = await client.read_coils(address, count=count, device_id=unit)
            else:
                response = await client.read_discrete_inputs(address, count=count, device_id=unit)
        except ConnectionException as exc:
            raise DeviceDisconnected(str(exc)) from None
        except ModbusIOException as exc:
            raise DeviceTimeout(f"no response from unit {unit}: {exc}") from None
        except ModbusException as exc:
            raise DeviceError(str(exc)) from None
        if response.isError():
            raise ModbusException_(getattr(response, "exception_code", 0), f"{table}@{address}")
        return response

    async def write(self, metric: str, value: Any) -> None:
        point: ModbusPoint | None = self._points.get(metric)
        if point is None or not point.writable:
            raise WriteRefused(f"point '{metric}' is not writable")
        if point.table not in ("holding", "coil"):
            raise WriteRefused(f"table '{point.table}' is read-only in Modbus")
        bus = self._bus
        if bus is None or not bus.client.connected:
            raise DeviceDisconnected("not connected")
        client, unit = bus.client, self.config.unit
        async with bus.lock:
            try:
                if point.table == "coil":
                    response = await client.write_coil(point.address, bool(value), device_id=unit)
                else:
                    data = encode_value(value, point.type, point.order, point.length)
                    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
                    response = await client.write_registers(point.address, words, device_id=unit)
            except ModbusIOException as exc:
                raise DeviceTimeout(str(exc)) from None
            except ModbusException as exc:
                raise DeviceError(str(exc)) from None
        if response.isError():
            raise ModbusException_(getattr(response, "exception_code", 0), f"write {metric}")
