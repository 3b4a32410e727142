"""`edge-agent scan --modbus PORT`: which unit ids answer on a line, and what they are.

Read only, by construction: the probe sends reads (03, 04) and Read Device Identification
(43/14), nothing else. For each unit id it asks holding then input register 0 (any answer,
an exception response included, means a unit is there); for a unit that answers it reads
its identification where supported, looks for the SunSpec marker "SunS" at 40000, 50000
and 0 and walks the SunSpec model chain, and reads the identification registers profiles
name (`match.id_register`). Every request has the same timeout and every unit a time
budget, so a scan of N ids takes at most N budgets, a silent id only two timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge_agent import profiles
from edge_agent.errors import DeviceError
from edge_agent.ports import resolve_port

SUNSPEC_MARKER = [0x5375, 0x6E53]  # "SunS"
SUNSPEC_BASES = (40000, 50000, 0)
_MAX_MODELS = 32
_OBJECT_NAMES = {0: "vendor", 1: "product_code", 2: "revision", 3: "vendor_url",
                 4: "product_name", 5: "model_name"}


@dataclass
class Unit:
    unit: int
    identification: dict[str, str] = field(default_factory=dict)
    sunspec_base: int | None = None
    sunspec_models: list[int] = field(default_factory=list)
    id_registers: dict[tuple[str, int], int] = field(default_factory=dict)
    suggestions: list[tuple[str, str]] = field(default_factory=list)  # (profile, why)
    incomplete: bool = False  # the unit's time budget ran out before every probe


def parse_units(text: str) -> list[int]:
    """`1-247`, `1,2,5-9`: unit ids, each 1..247 (0 is the broadcast address: never)."""
    units: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"'{text}' is not a list of unit ids like 1-247 or 1,2,5-9") from None
        if not 1 <= low <= high <= 247:
            raise ValueError(f"unit ids run from 1 to 247, not {part.strip()}")
        units.extend(range(low, high + 1))
    return sorted(set(units))


class _Probe:
    def __init__(self, client: Any, timeout: float) -> None:
        self.client, self.timeout = client, timeout

    async def ask(self, method: Any, *args: Any, **kwargs: Any) -> Any | None:
        """The response (normal or exception), or None when the unit said nothing."""
        try:
            return await method(*args, **kwargs)
        except ModbusException:
            return None

    async def registers(self, unit: int, table: str, address: int, count: int) -> list[int] | None:
        read = (self.client.read_holding_registers if table == "holding"
                else self.client.read_input_registers)
        response = await self.ask(read, address, count=count, device_id=unit)
        if response is None or response.isError():
            return None
        return list(response.registers)

    async def present(self, unit: int) -> bool:
        for read in (self.client.read_holding_registers, self.client.read_input_registers):
            if await self.ask(read, 0, count=1, device_id=unit) is not None:
                return True
        return False

    async def identify(self, found: Unit) -> None:
        response = await self.ask(self.client.read_device_information, read_code=1,
                                  object_id=0, device_id=found.unit)
        if response is None or response.isError():
            return
        for oid, raw in sorted(response.information.items()):
            value = raw[0] if isinstance(raw, list) else raw
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            found.identification[_OBJECT_NAMES.get(oid, f"object_{oid}")] = text.strip("\0 ")

    async def sunspec(self, found: Unit) -> None:
        for base in SUNSPEC_BASES:
            if await self.registers(found.unit, "holding", base, 2) == SUNSPEC_MARKER:
                found.sunspec_base = base
                break
        else:
            return
        address = found.sunspec_base + 2
        for _ in range(_MAX_MODELS):
            header = await self.registers(found.unit, "holding", address, 2)
            if header is None or header[0] == 0xFFFF:
                return
            found.sunspec_models.append(header[0])
            if header[0] == 1:  # the common model names the device: Mn, Md (32 chars each)
                for key, offset in (("sunspec_manufacturer", 2), ("sunspec_model", 18)):
                    words = await self.registers(found.unit, "holding", address + offset, 16)
                    if words:
                        text = b"".join(w.to_bytes(2, "big") for w in words)
                        found.identification[key] = text.split(b"\0", 1)[0].decode(
                            "latin-1").strip()
            address += 2 + header[1]

    async def id_registers(self, found: Unit, library: profiles.Library) -> None:
        wanted = {(e.profile.match.id_register.table, e.profile.match.id_register.address)
                  for e in library.entries.values()
                  if e.profile and e.profile.match and e.profile.match.id_register}
        for table, address in sorted(wanted):
            value = await self.registers(found.unit, table, address, 1)
            if value is not None:
                found.id_registers[(table, address)] = value[0]


def suggest(found: Unit, library: profiles.Library) -> list[tuple[str, str]]:
    """The profiles whose `match` fits what the unit told: (name, why)."""
    ident = {k: v.lower() for k, v in found.identification.items()}
    products = " ".join(ident.get(k, "") for k in ("product_code", "product_name", "model_name"))
    out = []
    for name in library.names:
        entry = library.entries[name]
        match = entry.profile.match if entry.profile else None
        if match is None or entry.profile.driver != "modbus":
            continue
        if match.vendor and match.vendor.lower() in ident.get("vendor", "") and (
                match.product is None or match.product.lower() in products):
            out.append((name, f"identification says {found.identification.get('vendor')}"))
        elif match.sunspec and set(match.sunspec) & set(found.sunspec_models):
            models = ", ".join(str(m) for m in sorted(set(match.sunspec)
                                                       & set(found.sunspec_models)))
            out.append((name, f"SunSpec model {models} at base {found.sunspec_base}"))
        elif match.id_register is not None:
            key = (match.id_register.table, match.id_register.address)
            value = found.id_registers.get(key)
            if value is not None and value in match.id_register.values:
                out.append((name, f"identification code {value} at {key[0]} "
                                  f"0x{key[1]:04X}"))
    return out


def _client(port: str, timeout: float, serial: dict[str, Any]) -> Any:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # silences are expected here
    if port.startswith("tcp://"):
        host, _, number = port.removeprefix("tcp://").rpartition(":")
        client: Any = AsyncModbusTcpClient(host or "127.0.0.1", port=int(number or 502),
                                           timeout=timeout, retries=0, reconnect_delay=0)
    else:
        client = AsyncModbusSerialClient(resolve_port(port), framer=FramerType.RTU,
                                         timeout=timeout, retries=0, reconnect_delay=0,
                                         **serial)
    # most ids are silent: pymodbus would drop the connection after a few silences
    client.set_max_no_responses(1 << 30)
    return client


async def scan(port: str, units: list[int], out: TextIO, *, timeout: float = 0.3,
               unit_time: float = 3.0, serial: dict[str, Any] | None = None,
               library: profiles.Library | None = None) -> int:
    library = library or profiles.Library(profiles.user_dir())
    serial = serial or {}
    try:
        client = _client(port, timeout, serial)
        opened = await client.connect()
    except (DeviceError, OSError, ValueError) as exc:
        print(f"edge-agent: cannot open {port}: {exc}", file=out)
        return 2
    if not opened:
        print(f"edge-agent: cannot open {port}", file=out)
        return 2
    probe = _Probe(client, timeout)
    print(f"Modbus units on {port} (ids {_ranges(units)}; {timeout:g} s per request, "
          f"at most {unit_time:g} s per unit; read only)", file=out)
    found: list[Unit] = []
    try:
        for unit in units:
            result = Unit(unit)
            try:
                async with asyncio.timeout(unit_time):
                    if not await probe.present(unit):
                        continue
                    found.append(result)
                    await probe.identify(result)
                    await probe.sunspec(result)
                    await probe.id_registers(result, library)
            except TimeoutError:
                result.incomplete = True
            result.suggestions = suggest(result, library)
            _report(result, port, serial, out)
    finally:
        with contextlib.suppress(Exception):
            client.close()
    silent = len(units) - len(found)
    print(f"{len(found)} unit(s) answered, {silent} id(s) silent", file=out)
    return 0


def _ranges(units: list[int]) -> str:
    parts, start = [], None
    for i, unit in enumerate(units):
        start = unit if start is None else start
        if i + 1 == len(units) or units[i + 1] != unit + 1:
            parts.append(f"{start}" if start == unit else f"{start}-{unit}")
            start = None
    return ",".join(parts)


def _report(found: Unit, port: str, serial: dict[str, Any], out: TextIO) -> None:
    facts = []
    if found.identification:
        facts.append("identification: " + ", ".join(
            f"{k} {v!r}" for k, v in found.identification.items()))
    if found.sunspec_base is not None:
        facts.append(f"SunSpec map at {found.sunspec_base}: models "
                     + ", ".join(str(m) for m in found.sunspec_models))
    if found.incomplete:
        facts.append("(time budget ran out: some probes skipped)")
    print(f"  unit {found.unit}: answers" + ("; " + "; ".join(facts) if facts else ""),
          file=out)
    if not found.suggestions:
        print("    no profile recognised: see `edge-agent profiles`, or write its points",
              file=out)
        return
    devices = []
    for name, why in found.suggestions:
        print(f"    suggested profile: {name} ({why})", file=out)
        device: dict[str, Any] = {"name": f"{name}-{found.unit}", "driver": "modbus",
                                  "profile": name,
                                  "port": port, "unit": found.unit}
        device.update({k: v for k, v in serial.items() if v is not None})
        devices.append(device)
    if found.sunspec_base not in (None, 40000):
        print(f"    note: the sunspec-* profiles assume the map at 40000, this one is at "
              f"{found.sunspec_base}: copy the profile and move its addresses", file=out)
    print("    config:", file=out)
    text = yaml.safe_dump(devices, sort_keys=False, default_flow_style=False, width=200)
    for line in text.splitlines():
        print(f"      {line}", file=out)
