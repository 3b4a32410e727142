"""`edge-agent scan --modbus PORT` (ModbusDriver.discover): which unit ids answer on a line,
what they are, and which device profile fits each.

Read only, by construction: the probe sends reads (03, 04) and Read Device Identification
(43/14), nothing else. For each unit id it asks holding then input register 0 (any answer,
an exception response included, means a unit is there); for a unit that answers it reads
its identification where supported, looks for the SunSpec marker "SunS" at 40000, 50000
and 0 and walks the SunSpec model chain, and reads the identification registers profiles
name (`match.id_register`). Every request has the same timeout and every unit a time
budget, so a scan of N ids takes at most N budgets, a silent id only two timeouts.

The profiles' match rules come in as plain data (the core's `profiles.match_rules`): the
driver knows the protocol, the core knows the profiles, neither imports the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge_agent.sdk import DeviceError, Discovered, resolve_port

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

    async def id_registers(self, found: Unit, rules: list[dict[str, Any]]) -> None:
        wanted = {(r["id_register"]["table"], r["id_register"]["address"])
                  for r in rules if r.get("id_register")}
        for table, address in sorted(wanted):
            value = await self.registers(found.unit, table, address, 1)
            if value is not None:
                found.id_registers[(table, address)] = value[0]


def suggest(found: Unit, rules: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The profiles whose match rule fits what the unit told: (name, why)."""
    ident = {k: v.lower() for k, v in found.identification.items()}
    products = " ".join(ident.get(k, "") for k in ("product_code", "product_name", "model_name"))
    out = []
    for rule in rules:
        vendor, product = rule.get("vendor"), rule.get("product")
        sunspec = set(rule.get("sunspec") or ()) & set(found.sunspec_models)
        id_register = rule.get("id_register")
        if vendor and vendor.lower() in ident.get("vendor", "") and (
                product is None or product.lower() in products):
            out.append((rule["name"], f"identification says {found.identification['vendor']}"))
        elif sunspec:
            models = ", ".join(str(m) for m in sorted(sunspec))
            out.append((rule["name"], f"SunSpec model {models} at base {found.sunspec_base}"))
        elif id_register:
            key = (id_register["table"], id_register["address"])
            value = found.id_registers.get(key)
            if value is not None and value in id_register["values"]:
                out.append((rule["name"], f"identification code {value} at {key[0]} "
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


def discover(port: str, *, units: list[int], timeout: float = 0.3, unit_time: float = 3.0,
             serial: dict[str, Any] | None = None,
             profiles: list[dict[str, Any]] | None = None) -> list[Discovered]:
    """The units answering at `port` (read only), each with the profiles that fit it."""
    return asyncio.run(_discover(port, units, timeout, unit_time, serial or {}, profiles or []))


async def _discover(port: str, units: list[int], timeout: float, unit_time: float,
                    serial: dict[str, Any], rules: list[dict[str, Any]]) -> list[Discovered]:
    try:
        client = _client(port, timeout, serial)
        opened = await client.connect()
    except (DeviceError, OSError, ValueError) as exc:
        raise DeviceError(f"cannot open: {exc}") from None
    if not opened:
        raise DeviceError("cannot open")
    probe = _Probe(client, timeout)
    found: list[Discovered] = []
    try:
        for unit in units:
            result = Unit(unit)
            try:
                async with asyncio.timeout(unit_time):
                    if not await probe.present(unit):
                        continue
                    await probe.identify(result)
                    await probe.sunspec(result)
                    await probe.id_registers(result, rules)
            except TimeoutError:
                result.incomplete = True
            result.suggestions = suggest(result, rules)
            found += _entries(result, port, serial)
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return found


def _entries(found: Unit, port: str, serial: dict[str, Any]) -> list[Discovered]:
    facts = []
    if found.identification:
        facts.append("identification: " + ", ".join(
            f"{k} {v!r}" for k, v in found.identification.items()))
    if found.sunspec_base is not None:
        facts.append(f"SunSpec map at {found.sunspec_base}: models "
                     + ", ".join(str(m) for m in found.sunspec_models))
        if found.sunspec_base != 40000:
            facts.append("the sunspec-* profiles assume the map at 40000: copy the profile "
                         "and move its addresses")
    if found.incomplete:
        facts.append("time budget ran out: some probes skipped")
    head = f"unit {found.unit}: answers" + ("; " + "; ".join(facts) if facts else "")
    if not found.suggestions:
        return [Discovered(f"{head}; no profile recognised (see `edge-agent profiles`, or "
                           "write its points)", {})]
    entries = []
    for name, why in found.suggestions:
        device: dict[str, Any] = {"name": f"{name}-{found.unit}", "driver": "modbus",
                                  "profile": name, "port": port, "unit": found.unit}
        device.update({k: v for k, v in serial.items() if v is not None})
        entries.append(Discovered(f"{head}; suggested profile: {name} ({why})", device))
    return entries
