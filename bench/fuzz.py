"""Fuzzes every parser of untrusted input, calling the codecs directly (no I/O), and asserts
0 crashes and 0 garbage published as good.

    .venv/bin/python bench/fuzz.py [--inputs 1000000] [--seed 1] [--jobs 1] [--only nmea,usb]

A crash is any exception other than the target's documented rejection (NmeaError for a
sentence that is dropped, LineError for a line, ConfigError for a config file...). Garbage is
a value outside its valid range, non-finite, undecodable or otherwise invalid that leaves the
codec with quality good (or, for NMEA, not bad); for the MQTT downlink targets (JSON `set`,
Sparkplug DCMD, NCMD, STATE), a write accepted with a value other than the one asked or
outside its point's type and limits, a request left unanswered or unanswerable, a retained
command taken, a Rebirth nobody asked for. Inputs are mostly mutations of valid seeds
(structure-aware where a checksum or a grammar would otherwise reject everything at the
door), with hostile tokens spliced in (`1e300`, `nan`, `1_000`, `[` x 3000, NUL, invalid
UTF-8...), and some purely random bytes. Prints one line per target: inputs, inputs/s,
rejected, good readings checked, crashes, garbage; exits 1 if any target had a crash or
garbage. docs/security.md holds the figures.

Adding a target: write a function that takes a `random.Random` and returns `(generate,
check)`, where `generate()` makes one hostile input and `check(input)` feeds it to the code
under test and returns how many good values it verified, raising `Garbage` when something
invalid passes as good; decorate it with `@target("name", rejects=(TheDocumentedError,))`.
Everything else (counting, timing, splitting across --jobs, the report) is shared.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.errors import ConfigError  # noqa: E402
from edge_agent.model import BAD, GOOD  # noqa: E402
from edge_agent_drivers.iec62056.codec import FrameError as Iec62056FrameError  # noqa: E402
from edge_agent_drivers.nmea.codec import NmeaError  # noqa: E402

Generate = Callable[[], Any]
Check = Callable[[Any], int]


class Garbage(AssertionError):
    """Something invalid left the code under test as good."""


@dataclass(frozen=True)
class Target:
    name: str
    build: Callable[[random.Random], tuple[Generate, Check]]
    rejects: tuple[type[BaseException], ...]


TARGETS: dict[str, Target] = {}


def target(name: str, rejects: tuple[type[BaseException], ...] = ()):
    def register(build: Callable[[random.Random], tuple[Generate, Check]]):
        TARGETS[name] = Target(name, build, rejects)
        return build
    return register


# -- mutation -------------------------------------------------------------------------------
TOKENS = [b"1e300", b"-1e300", b"5.1e307", b"1e-400", b"nan", b"NaN", b"inf", b"-inf",
          b"Infinity", b"1_000", b"99999", b"-5", b"720", b"-1", b"0", b"-0", b".", b"..",
          b"0x10", b"+1", b" 1", b"\x00", b"\xff", b"\xc3\x28", b"\xef\xbb\xbf", b"\x1b[2J",
          b"[" * 3000, b"{\"a\":" * 50, b"9" * 400, b"\r\n", b"\n", b"\r", b",", b"*", b"$",
          b"\t", b"&a", b"*a", b"!!binary", b"~", b"/", b"+", b"#", b"\xe2\x80\x8b"]


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    """A few random edits: flip, insert a token, delete, overwrite, splice, repeat."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        size = len(buf)
        at = rng.randint(0, size)
        op = rng.randrange(7)
        if op == 0 and size:
            buf[rng.randrange(size)] = rng.randrange(256)
        elif op == 1:
            buf[at:at] = rng.choice(TOKENS)
        elif op == 2:
            del buf[at:at + rng.randint(1, 8)]
        elif op == 3:
            buf[at:at + rng.randint(1, 6)] = rng.choice(TOKENS)
        elif op == 4:
            other = rng.choice(seeds)
            cut = rng.randint(0, len(other))
            buf[at:] = other[cut:]
        elif op == 5 and size:
            start = rng.randrange(size)
            buf[at:at] = buf[start:start + rng.randint(1, 16)] * rng.randint(1, 4)
        else:
            buf[at:at] = rng.randbytes(rng.randint(1, 6))
    return bytes(buf)


def hostile_bytes(rng: random.Random, seeds: list[bytes]) -> bytes:
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randint(0, 96))
    if roll < 0.10:
        return rng.choice(seeds)
    return mutate(rng, rng.choice(seeds), seeds)


def finite_number(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


# -- NMEA -----------------------------------------------------------------------------------
@target("nmea", rejects=(NmeaError,))
def nmea(rng: random.Random) -> tuple[Generate, Check]:
    from edge_agent_drivers.nmea.codec import (
        RANGES,
        EpochAssembler,
        decode,
        format_sentence,
        parse_sentence,
    )

    seeds_fields = [
        ("GGA", ["120000.00", "5130.000", "N", "00007.500", "W", "1", "09", "0.9", "35.0", "M",
                 "47.0", "M", "", ""]),
        ("RMC", ["120000.00", "A", "5130.000", "N", "00007.500", "W", "10.0", "90.0", "260326",
                 "", "", "A"]),
        ("VTG", ["90.0", "T", "", "M", "10.0", "N", "18.52", "K", "A"]),
        ("VTG", ["054.7", "034.4", "005.5", "010.2"]),
        ("GSA", ["A", "3", "04", "05", "", "09", "12", "", "", "24", "", "", "", "", "2.5", "1.3",
                 "2.1"]),
        ("GLL", ["4916.45", "N", "12311.12", "W", "225444", "A", "A"]),
        ("ZDA", ["201530.00", "04", "07", "2002", "00", "00"]),
    ]
    seeds = [format_sentence("GP", kind, fields) for kind, fields in seeds_fields]
    texts = [t.decode("latin-1") for t in TOKENS if b"[" * 10 not in t and len(t) < 50]
    epoch = EpochAssembler()

    def generate() -> bytes:
        if rng.random() < 0.3:
            return hostile_bytes(rng, seeds)
        kind, fields = rng.choice(seeds_fields)
        fields = list(fields)
        for _ in range(rng.randint(1, 3)):
            index = rng.randrange(len(fields))
            roll = rng.random()
            if roll < 0.5:
                fields[index] = rng.choice(texts)
            elif roll < 0.8:
                fields[index] = repr(rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-5, 300))
            else:
                fields[index] = str(rng.randint(-10**6, 10**6))
        if rng.random() < 0.1:
            fields = fields[:rng.randrange(len(fields) + 1)]
        # a right checksum, so the field checks are what is tested
        return _with_checksum(b"GP" + kind.encode() + b"," + ",".join(fields).encode("latin-1"))

    def check(line: bytes) -> int:
        sentence = parse_sentence(line)  # NmeaError: the sentence is dropped and counted
        decoded = decode(sentence)
        if decoded is None:
            return 0
        checked = 0
        for reading in decoded.readings:
            if reading.value is None:
                if reading.quality != BAD:
                    raise Garbage(f"{reading} without a value is not bad: {line!r}")
                continue
            low, high = RANGES[reading.metric]
            if not (finite_number(reading.value) and low <= reading.value <= high):
                raise Garbage(f"{reading} published as {reading.quality}: {line!r}")
            checked += 1
        epoch.add(sentence.type, decoded, 0)
        return checked

    return generate, check


def _with_checksum(body: bytes) -> bytes:
    from edge_agent_drivers.nmea.codec import checksum

    return b"$%s*%02X\r\n" % (body, checksum(body))


# -- line instruments: framing and the three formats ----------------------------------------
@target("line")
def line(rng: random.Random) -> tuple[Generate, Check]:
    from edge_agent.framing import LineSplitter
    from edge_agent_drivers.line.codec import INT_RANGE, LineError, LineParser
    from edge_agent_drivers.line.config import LineDevice

    fields = [{"name": "a"}, {"name": "n", "type": "int"}, {"name": "b", "type": "bool"},
              {"name": "s", "type": "string"}]
    parsers = [
        LineParser(LineDevice(name="j", driver="line", port="p", format="json", fields=[
            {**f, "source": {"a": "a", "n": "x.n", "b": "b", "s": "s"}[f["name"]]}
            for f in fields])),
        LineParser(LineDevice(name="d", driver="line", port="p", format="delimited", fields=[
            {**f, "source": i} for i, f in enumerate(fields)],
            quality=[{"source": 4, "good": ["OK"]}])),
        LineParser(LineDevice(name="r", driver="line", port="p", format="regex",
                              pattern=r"(?P<a>\S+) (?P<n>\S+) (?P<b>\S+) (?P<s>.*)",
                              fields=fields)),
    ]
    seeds = [b'{"a": 1.5, "x": {"n": 2}, "b": true, "s": "ok"}\n',
             b'{"a": -2e-3, "x": {"n": -7}, "b": "on", "s": [1, {"k": null}]}\r\n',
             b"1.5,2,yes,ok,OK\n", b"-0.25,10,0,text,BAD\r\n", b"21.5 3 true hello world\n"]
    splitters = [LineSplitter(b"\n", 4096), LineSplitter(b"\r\n", 64), LineSplitter(b";", 16)]
    kinds = {"a": float, "n": int, "b": bool, "s": str}

    def generate() -> bytes:
        data = hostile_bytes(rng, seeds)
        if rng.random() < 0.2:  # several lines in one read
            data += hostile_bytes(rng, seeds) + hostile_bytes(rng, seeds)
        return data

    def check(data: bytes) -> int:
        checked = 0
        splitter = rng.choice(splitters)
        for chunk_start in range(0, len(data), 512):
            lines = splitter.feed(data[chunk_start:chunk_start + 512])
            if len(splitter._buffer) > splitter.max_line:  # the bound itself
                raise Garbage("the framing buffer grew past max_line")
            for raw in lines:
                if splitter.terminator in raw or not 0 < len(raw) <= splitter.max_line:
                    raise Garbage(f"framing returned {raw[:40]!r}")
                try:
                    text = raw.decode("ascii")
                except UnicodeDecodeError:
                    continue
                for parser in parsers:
                    try:
                        readings = parser.parse(text)
                    except LineError:
                        continue
                    for reading in readings:
                        if reading.quality == BAD:
                            continue
                        value = reading.value
                        if value is None or type(value) is not kinds[reading.metric]:
                            raise Garbage(f"{reading} from {text[:60]!r}")
                        if isinstance(value, float) and not math.isfinite(value):
                            raise Garbage(f"{reading} from {text[:60]!r}")
                        if isinstance(value, int) and not isinstance(value, bool) and not (
                                INT_RANGE[0] <= value <= INT_RANGE[1]):
                            raise Garbage(f"{reading} from {text[:60]!r}")
                        checked += 1
        return checked

    return generate, check


# -- USB reports ----------------------------------------------------------------------------
@target("usb")
def usb(rng: random.Random) -> tuple[Generate, Check]:
    import struct

    from edge_agent_drivers.usb.config import UsbField
    from edge_agent_drivers.usb.report import ReportDecoder, field_size

    layouts = []
    for _ in range(24):
        fields = []
        for index in range(rng.randint(1, 6)):
            kind = rng.choice(["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                               "uint64", "float32", "float64", "bool", "string"])
            field = {"name": f"f{index}", "offset": rng.randint(0, 40), "type": kind,
                     "endian": rng.choice(["big", "little"])}
            if kind == "string":
                field["length"] = rng.randint(1, 12)
            if kind == "bool" and rng.random() < 0.5:
                field["bit"] = rng.randint(0, 15)
            fields.append(UsbField.model_validate(field))
        layouts.append((ReportDecoder(fields), fields))
    seeds = [struct.pack(">hHiIqfd", -5, 5, -7, 7, -9, 1.5, 2.5) + b"name\x00pad" * 3,
             bytes(range(64)), b"\x7f\xc0\x00\x00" * 16, b"\xff" * 64]
    ranges = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
              "uint16": (0, 65535), "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
              "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}

    def generate() -> tuple[int, bytes]:
        data = hostile_bytes(rng, seeds)
        return rng.randrange(len(layouts)), data[:rng.randint(0, 80)]

    def check(item: tuple[int, bytes]) -> int:
        index, data = item
        decoder, fields = layouts[index]
        readings = decoder.decode(data)
        if len(readings) != len(fields):
            raise Garbage(f"{len(readings)} readings for {len(fields)} fields")
        checked = 0
        for reading, field in zip(readings, fields, strict=True):
            if field.offset + field_size(field) > len(data):
                if reading.quality != BAD:
                    raise Garbage(f"{reading} from a report too short for it")
                continue
            if reading.quality == BAD:
                continue
            value = reading.value
            if field.type in ranges:
                low, high = ranges[field.type]
                if not (isinstance(value, int) and low <= value <= high):
                    raise Garbage(f"{reading} is not a {field.type}")
            elif field.type.startswith("float"):
                if not (isinstance(value, float) and math.isfinite(value)):
                    raise Garbage(f"{reading} is not a finite float")
            elif not isinstance(value, bool if field.type == "bool" else str):
                raise Garbage(f"{reading} is not a {field.type}")
            checked += 1
        return checked

    return generate, check


# -- Modbus responses -----------------------------------------------------------------------
@target("modbus")
def modbus(rng: random.Random) -> tuple[Generate, Check]:
    from edge_agent_drivers.modbus.codec import BlockDecoder
    from edge_agent_drivers.modbus.config import ModbusPoint
    from edge_agent_drivers.modbus.plan import plan

    decoders = []
    for layout in range(24):
        points, address = [], 0
        for index in range(rng.randint(1, 12)):
            if layout % 4 == 0:
                point = ModbusPoint(name=f"p{index}", table="coil", address=address)
            else:
                kind = rng.choice(["uint16", "int16", "uint32", "int32", "uint64", "int64",
                                   "float32", "float64", "bool", "string"])
                point = ModbusPoint(name=f"p{index}", address=address, type=kind, length=4,
                                    order=rng.choice(["ABCD", "CDAB", "BADC", "DCBA"]),
                                    bit=rng.choice([None, 3]) if kind == "bool" else None)
            points.append(point)
            address += point.registers + rng.randint(0, 2)
        decoders += [BlockDecoder(block) for block in plan(points)]
    ranges = {"int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-(2**31), 2**31 - 1),
              "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1),
              "uint64": (0, 2**64 - 1)}
    odd = [-1, 65536, 70000, None, "x", 1.5, 2**70]

    def generate() -> tuple[int, list[Any]]:
        index = rng.randrange(len(decoders))
        count = decoders[index].block.count
        size = max(0, count + rng.randint(-4, 4)) if rng.random() < 0.5 else count
        words = [rng.choice((0, 0xFFFF, 0x7FC0, 0x8000, rng.randrange(65536)))
                 for _ in range(size)]
        if words and rng.random() < 0.02:
            words[rng.randrange(len(words))] = rng.choice(odd)
        return index, words

    def check(item: tuple[int, list[Any]]) -> int:
        index, words = item
        decoder = decoders[index]
        readings = decoder.decode(words)
        if len(readings) != len(decoder.block.points):
            raise Garbage("a reading missing or added")
        checked = 0
        for reading, (_, point) in zip(readings, decoder.block.points, strict=True):
            held = point.address - decoder.block.address + point.registers <= len(words)
            if reading.quality != GOOD:
                continue
            value = reading.value
            if not held or value is None:
                raise Garbage(f"{reading} is good without registers for it")
            if point.type in ranges:
                low, high = ranges[point.type]
                if not (isinstance(value, int) and low <= value <= high):
                    raise Garbage(f"{reading} is not a {point.type}")
            elif point.type.startswith("float") and not (
                    isinstance(value, float) and math.isfinite(value)):
                raise Garbage(f"{reading} is not a finite float")
            checked += 1
        return checked

    return generate, check


# -- meters: IEC 62056-21 readouts, M-Bus frames and records -----------------------------
@target("iec62056", rejects=(Iec62056FrameError,))
def iec62056(rng: random.Random) -> tuple[Generate, Check]:
    from edge_agent_drivers.iec62056 import codec

    lines = ["0.0.0(12345678)", "1.8.0(001234.567*kWh)", "2.8.0(000012.000*kWh)",
             "1.7.0(01.250*kW)", "32.7.0(230.1*V)", "31.7.0(002.50*A)", "14.7.0(50.00*Hz)",
             "0.9.1(12:00:00)", "0.9.2(26-03-01)", "1-0:1.8.0*255(000001.000*kWh)"]
    seeds = [codec.readout(lines), codec.readout(lines[:3])]
    tokens = [t.decode("latin-1") for t in TOKENS if len(t) < 60]

    def generate() -> bytes:
        if rng.random() < 0.3:
            return hostile_bytes(rng, seeds)
        chosen = [line for line in lines if rng.random() < 0.7]
        for _ in range(rng.randint(1, 3)):  # hostile values inside a right BCC
            if chosen:
                index = rng.randrange(len(chosen))
                code, _, _ = chosen[index].partition("(")
                chosen[index] = f"{code}({rng.choice(tokens)}*{rng.choice(['kWh', 'V', ''])})"
        text = "".join(f"{line}\r\n" for line in chosen) + "!\r\n"
        body = text.encode("latin-1") + bytes([codec.ETX])
        return bytes([codec.STX]) + body + bytes([codec.bcc(body)])

    def check(message: bytes) -> int:
        checked = 0
        for data_set in codec.parse_readout(message):  # FrameError: refused, counted
            value = codec.typed_value(data_set.value)
            if isinstance(value, float) and not math.isfinite(value):
                raise Garbage(f"{data_set} typed as {value}")
            checked += 1
        return checked

    return generate, check


@target("mbus")
def mbus(rng: random.Random) -> tuple[Generate, Check]:
    from edge_agent_drivers.mbus import frames, records
    from edge_agent_simulators.mbus import heat_meter, water_meter

    meters = [heat_meter(), water_meter()]
    seeds = [meter.answer(meter.address, fcb) for meter in meters for fcb in (True, False)]
    seeds += [frames.snd_nke(5), frames.req_ud2(5, True), bytes([frames.ACK])]

    def generate() -> bytes:
        roll = rng.random()
        if roll < 0.5:  # a long frame with a right checksum around hostile variable data
            payload = mutate(rng, rng.choice(seeds[:4])[4:-2], seeds)[:250]
            if len(payload) < 3:
                payload = payload.ljust(3, b"\x00")
            return frames.long_frame(payload[0], payload[1], payload[2], payload[3:])
        return hostile_bytes(rng, seeds)

    def check(data: bytes) -> int:
        reader = frames.FrameReader()
        reader.feed(data)
        checked = 0
        for _ in range(len(data) + 1):
            try:
                frame = reader.next()
            except frames.FrameError:
                continue
            if frame is None:
                break
            if frame.kind != "long":
                continue
            try:
                telegram = records.decode(frame)
            except frames.FrameError:
                continue
            for record in telegram.records:
                if isinstance(record.value, float) and not math.isfinite(record.value):
                    raise Garbage(f"{record} from {data.hex()[:120]}")
                checked += 1
        if len(reader.buffer) > reader.MAX_PENDING:
            raise Garbage("the frame reader holds more than MAX_PENDING bytes")
        return checked

    return generate, check


@target("can")
def can_frames(rng: random.Random) -> tuple[Generate, Check]:
    import can

    from edge_agent_drivers.can.config import CanDevice
    from edge_agent_drivers.can.driver import CanDriver
    from edge_agent_simulators.can.slcan import DEFAULT_DBC

    driver = CanDriver(CanDevice(name="c", driver="can", interface="virtual", channel="fuzz",
                                 dbc=DEFAULT_DBC))
    ids = [*driver._messages, 0x7FF, 0x1FFFFFFF]  # the DBC's frames and strangers
    limits = {frame_id: {sig.name: (sig.minimum, sig.maximum) for sig in message.signals}
              for frame_id, message in driver._messages.items()}
    names = {metric: signal for (_, signal), (metric, _) in driver._names.items()}

    def generate() -> Any:
        frame_id = rng.choice(ids)
        roll = rng.random()
        size = 8 if rng.random() < 0.7 else rng.randint(0, 8)
        return can.Message(arbitration_id=frame_id, data=rng.randbytes(size),
                           is_error_frame=roll < 0.02, is_remote_frame=0.02 <= roll < 0.04,
                           is_extended_id=frame_id > 0x7FF, timestamp=rng.random() * 1e6)

    def check(frame: Any) -> int:
        sample = driver._decode(frame)
        if sample is None:
            return 0
        checked = 0
        for reading in sample.readings:
            if reading.quality != GOOD:
                continue
            low, high = limits[frame.arbitration_id][names[reading.metric]]
            value = reading.value
            if not finite_number(value) or (low is not None and value < low) or (
                    high is not None and value > high):
                raise Garbage(f"{reading} from {frame}")
            checked += 1
        return checked

    return generate, check


# -- config files ---------------------------------------------------------------------------
@target("config", rejects=(ConfigError,))
def config(rng: random.Random) -> tuple[Generate, Check]:
    from edge_agent import config_source, identity
    from edge_agent.config import validate
    from edge_agent.device_config import MAX_NAME

    seeds = [
        b"node: edge-1\nmqtt:\n  url: mqtt://127.0.0.1:1883\n  topic_prefix: plant/edge\n"
        b"  qos: 1\n  sparkplug: {group_id: g1}\nhttp: {listen: '0.0.0.0:7070'}\n",
        b"devices:\n  - name: boiler-1\n    driver: modbus\n    port: tcp://127.0.0.1:5020\n"
        b"    points: &p\n      - {name: t, address: 0, type: float32, scale: 0.1}\n"
        b"  - {name: b2, driver: modbus, port: tcp://127.0.0.1:5021, points: *p}\n",
        b"devices:\n  - {name: gps, driver: nmea, port: /dev/ttyUSB0, talkers: [GN]}\n"
        b"  - {name: s, driver: line, port: /dev/ttyACM0, format: json, fields: [{name: a}]}\n",
        b"a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n",
        b"mqtt: {topic_prefix: $SYS/edge}\nnode: \"a\\nb\"\n",
    ]

    def generate() -> bytes:
        return hostile_bytes(rng, seeds)

    def check(data: bytes) -> int:
        text = config_source.decode_text(data[:config_source.MAX_BYTES], "fuzz")
        parsed = validate(config_source.parse(text, "fuzz").data, environ={},
                          strict_drivers=False)
        mqtt = parsed.mqtt
        try:
            identity.check_prefix(mqtt.topic_prefix, mqtt.allow_dollar_prefix)
            identity.check_level(mqtt.sparkplug.group_id)
            if parsed.node is not None:
                identity.check_node_name(parsed.node)
        except ValueError as exc:
            raise Garbage(f"accepted: {exc}") from None
        for device in parsed.devices:
            if not 0 < len(device.name) <= MAX_NAME or set(device.name) & set("/+#$\x00"):
                raise Garbage(f"accepted device name {device.name!r}")
        return 1

    return generate, check


# -- node names -----------------------------------------------------------------------------
@target("node-name")
def node_name(rng: random.Random) -> tuple[Generate, Check]:
    from edge_agent import identity

    alphabet = "ab_/+#~-. \n\x00\u200b\udce9é"
    seen: dict[str, str] = {}

    def generate() -> str:
        if rng.random() < 0.01:
            return "x" * rng.randint(200, 70_000)
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))

    def check(name: str) -> int:
        try:
            identity.check_node_name(name)
        except ValueError:
            return 0
        level = identity.topic_safe(name)  # the topic level: the contract's `_`
        if identity.text_problem(level, identity.MAX_NODE_BYTES) is not None or (
                set(level) & set("/+#")):
            raise Garbage(f"{name!r} became the topic level {level!r}")
        safe = identity.injective_safe(name)  # the client id's form: never shared
        if (identity.text_problem(safe, 2 * identity.MAX_NODE_BYTES + 1) is not None
                or set(safe) & set("/+#")):
            raise Garbage(f"{name!r} became {safe!r}")
        earlier = seen.setdefault(safe, name)
        if earlier != name:
            raise Garbage(f"{earlier!r} and {name!r} both became {safe!r}")
        return 1

    return generate, check


# -- the MQTT downlink: JSON `set`, Sparkplug DCMD/NCMD and STATE ----------------------------
#: the points downlink targets write to: every raw type, scaled and not, with limits
def _downlink_points() -> dict[str, Any]:
    from edge_agent.model import PointSpec

    return {spec.name: spec for spec in (
        PointSpec("i16", writable=True, value_type="int16"),
        PointSpec("u16", writable=True, value_type="uint16", minimum=0, maximum=60000),
        PointSpec("sp", writable=True, value_type="int16", scale=0.1, offset=-40,
                  minimum=-50, maximum=90),
        PointSpec("u32", writable=True, value_type="uint32"),
        PointSpec("i64", writable=True, value_type="int64"),
        PointSpec("u64", writable=True, value_type="uint64"),
        PointSpec("f32", writable=True, value_type="float32"),
        PointSpec("f64", writable=True, value_type="float64", minimum=-1e6, maximum=1e6),
        PointSpec("on", writable=True, value_type="bool"),
        PointSpec("label", writable=True, value_type="string"),
        PointSpec("ro", value_type="int16"),
    )}


_INT_LIMITS = {"int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
               "uint32": (0, (1 << 32) - 1), "int64": (-(1 << 63), (1 << 63) - 1),
               "uint64": (0, (1 << 64) - 1)}


class _Target:
    """The far end of the write path: a device whose points are `_downlink_points()`."""

    def __init__(self, points: dict[str, Any]) -> None:
        from edge_agent.normalize import Scaling

        self.name, self.status, self.points = "dev", "connected", points
        self._scalings = {name: Scaling(spec) for name, spec in points.items()}

    def scaling(self, metric: str) -> Any:
        return self._scalings[metric]


def _check_write(target: _Target, metric: str, value: Any, origin: Any) -> int:
    """Validates one write as the downlink does; an accepted one must be exactly `value`,
    inside its point's type and limits. Returns 1 for a write that would reach the device."""
    from edge_agent.downlink import validate
    from edge_agent.errors import WriteRefused

    try:
        raw = validate(target, metric, value)
    except WriteRefused:
        return 0
    spec = target.points[metric]
    scaling = target.scaling(metric)
    kind = spec.value_type

    def garbage(why: str) -> Garbage:
        return Garbage(f"{metric}={value!r} -> raw {raw!r}: {why} ({origin!r})"[:300])

    if not spec.writable:
        raise garbage("not writable")
    if kind == "bool":
        if raw is not value or type(value) is not bool:
            raise garbage("not the boolean asked")
        return 1
    if kind == "string":
        if raw != value or type(raw) is not str:
            raise garbage("not the string asked")
        return 1
    if isinstance(value, bool) or not finite_number(value):
        raise garbage("not a finite number")
    if (spec.minimum is not None and value < spec.minimum) or (
            spec.maximum is not None and value > spec.maximum):
        raise garbage("outside min/max")
    if kind in _INT_LIMITS:
        low, high = _INT_LIMITS[kind]
        if type(raw) is not int or not low <= raw <= high:
            raise garbage(f"outside {kind}")
        if scaling.identity and raw != value:
            raise garbage("not the value asked")
        if not scaling.identity and not math.isclose(scaling.apply(raw), value, rel_tol=1e-6,
                                                     abs_tol=1e-6):
            raise garbage("does not scale back to the value asked")
    else:
        if type(raw) is not float or not math.isfinite(raw):
            raise garbage("not a finite float")
        if kind == "float32" and abs(raw) > 3.4028234663852886e38:
            raise garbage("outside float32")
        if raw != value:
            raise garbage("not the value asked")
        if isinstance(value, int) and kind == "float32" and struct.unpack(
                "<f", struct.pack("<f", raw))[0] != value:
            raise garbage("a whole number float32 cannot hold exactly")
    return 1


class _NullLink:
    """A `Link` that drops what an output publishes (births after a Rebirth, answers)."""

    def __init__(self) -> None:
        self.last: Any = None

    def is_connected(self) -> bool:
        return True

    def publish_now(self, message: Any) -> None:
        self.last = message

    def publish_state(self, topic: str, payload: bytes) -> None:
        pass

    def pump(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


_JSON_VALUES = [b"21.5", b"-3", b"0", b"70000", b"65543", b"4294967295", b"9223372036854775808",
                b"-9223372036854775809", b"18446744073709551616", b"1e999", b"-1e308", b"1e39",
                b"NaN", b"Infinity", b"-Infinity", b"true", b"false", b"null", b'"x"', b'""',
                b'"\\ud800"', b"[1]", b'{"a": 1}', b"1.0000001", b"21.55", b"-0.0", b"9" * 400,
                b"3.4028235e38", b"1.7976931348623157e308", b"5e-324", b"12.3e1"]
_JSON_IDS = [b'"r1"', b"7", b"-7", b"1.5", b"NaN", b"Infinity", b"1e999", b"null", b"true",
             b"9007199254740993", b'"' + b"x" * 129 + b'"', b'"\\ud800"', b"[1]", b'{"id": 1}']


@target("downlink-json")
def downlink_json(rng: random.Random) -> tuple[Generate, Check]:
    """JSON `set` payloads through `JsonOutput.command` (edge_agent.inbound) and the one
    validation of a value (`raw_value`); every request must be answerable."""
    from edge_agent import config as config_mod
    from edge_agent.downlink import WriteRequest, WriteResult
    from edge_agent.inbound import valid_id
    from edge_agent.outputs.json import JsonOutput

    points = _downlink_points()
    device = _Target(points)
    link = _NullLink()
    config = config_mod.validate({"node": "n1"})
    output = JsonOutput(config, "n1", _Directory(), link)
    names = [*points, "ghost"]
    seeds = [b'{"value": %s, "id": %s}' % (v, i) for v in _JSON_VALUES[:6] for i in _JSON_IDS[:3]]

    def generate() -> tuple[str, bytes, bool]:
        metric = rng.choice(names)
        roll = rng.random()
        if roll < 0.25:  # plausible values, so that many requests reach the last checks
            value = rng.choice([
                str(rng.randint(-70000, 70000)), str(rng.getrandbits(rng.choice([16, 32, 64]))),
                repr(round(rng.uniform(-60, 100), rng.randint(0, 3))), "true", "false",
                '"%s"' % ("x" * rng.randint(0, 20))]).encode()
            payload = b'{"value": %s, "id": %s}' % (value, rng.choice(_JSON_IDS))
        elif roll < 0.6:
            value, rid = rng.choice(_JSON_VALUES), rng.choice(_JSON_IDS)
            if rng.random() < 0.3:
                value = repr(rng.choice([rng.uniform(-1e5, 1e5), rng.randint(-2**70, 2**70),
                                         rng.uniform(-1, 1) * 10.0 ** rng.randint(-300, 300)]))
                value = value.encode()
            payload = b'{"value": %s, "id": %s}' % (value, rid)
        else:
            payload = hostile_bytes(rng, seeds)
        return metric, payload, rng.random() < 0.02

    def check(item: tuple[str, bytes, bool]) -> int:
        metric, payload, retained = item
        request = output.command(f"edge/n1/dev/set/{metric}", payload, retained)
        if request is None:
            if payload:
                raise Garbage(f"a request went unanswered: {payload[:80]!r}")
            return 0
        if not isinstance(request, WriteRequest):
            raise Garbage(f"not a request: {request!r}")
        if request.request_id is not None and not valid_id(request.request_id):
            raise Garbage(f"invalid id {request.request_id!r} would be echoed")
        output.answer(request, [WriteResult(False, "refused", refused=True)])  # encodable
        if request.problem is not None:
            return 0
        if retained:
            raise Garbage(f"a retained command was taken: {payload[:80]!r}")
        [(name, value)] = request.writes
        if name not in points:
            return 0
        return _check_write(device, name, value, payload[:80])

    return generate, check


class _Directory:
    def __init__(self, *views: Any) -> None:
        self._views = {v.name: v for v in views}

    def views(self) -> list[Any]:
        return list(self._views.values())

    def view(self, name: str) -> Any:
        return self._views.get(name)


def _sparkplug_session() -> tuple[Any, _Target]:
    from edge_agent.outputs.base import FixedView
    from edge_agent.outputs.sparkplug.session import SparkplugSession

    points = _downlink_points()
    view = FixedView("dev", "connected", points=points,
                     point_types={n: s.value_type for n, s in points.items() if s.value_type})
    session = SparkplugSession(link=_NullLink(), group="g", node="n1",
                               devices=_Directory(view), primary_host="host")
    session._device(view)  # its metrics defined (aliases, datatypes), as after a DBIRTH
    return session, _Target(points)


def _random_metric(rng: random.Random, names: list[str], aliases: list[int]) -> Any:
    from edge_agent.outputs.sparkplug import sparkplug_b_pb2 as pb

    metric = pb.Payload.Metric()
    if rng.random() < 0.6:
        metric.name = rng.choice(names)
    else:
        metric.alias = rng.choice(aliases) if rng.random() < 0.9 else rng.getrandbits(64)
    if rng.random() < 0.5:
        metric.datatype = rng.choice([rng.randrange(0, 35), rng.getrandbits(32)])
    roll = rng.randrange(8)
    edges32 = [0, 1, 7, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 65543, 70000, 0x7FFFFFFF, 0x80000000,
               0xFFFF8000, 0xFFFFFFF9, 0xFFFFFFFF]
    edges64 = [*edges32, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 7]
    if roll == 0:
        metric.int_value = rng.choice([rng.getrandbits(32), rng.choice(edges32)])
    elif roll == 1:
        metric.long_value = rng.choice([rng.getrandbits(64), rng.choice(edges64)])
    elif roll == 2:
        metric.float_value = rng.choice([rng.uniform(-1e6, 1e6), math.nan, math.inf, 3.4e38,
                                         21.7, -0.0])
    elif roll == 3:
        metric.double_value = rng.choice([rng.uniform(-1e6, 1e6), math.nan, -math.inf, 1e308,
                                          21.55, 21.5, -0.0, 5e-324])
    elif roll == 4:
        metric.boolean_value = rng.random() < 0.5
    elif roll == 5:
        metric.string_value = rng.choice(["", "x", "é" * 40, "\x00", "a" * 300])
    elif roll == 6:
        metric.bytes_value = rng.randbytes(4)
    if rng.random() < 0.05:
        metric.is_null = True
    return metric


@target("sparkplug-dcmd")
def sparkplug_dcmd(rng: random.Random) -> tuple[Generate, Check]:
    """DCMD payloads (structured and mutated protobuf) through the session's reading of
    commands (`codec.command_value`) and the same validation as the JSON downlink."""
    from edge_agent.downlink import WriteRequest
    from edge_agent.outputs.sparkplug import sparkplug_b_pb2 as pb

    session, device = _sparkplug_session()
    defs = session._devices["dev"].metrics
    names, aliases = [*defs, "ghost"], [d.alias for d in defs.values()]
    seeds = [pb.Payload(timestamp=1, metrics=[_random_metric(rng, names, aliases)])
             .SerializeToString() for _ in range(50)]

    def generate() -> tuple[bytes, bool]:
        if rng.random() < 0.7:
            metrics = [_random_metric(rng, names, aliases) for _ in range(rng.choice([1, 1, 2, 3]))]
            data = pb.Payload(timestamp=rng.getrandbits(64), metrics=metrics).SerializeToString()
        else:
            data = hostile_bytes(rng, seeds)
        return data, rng.random() < 0.02

    def check(item: tuple[bytes, bool]) -> int:
        data, retained = item
        request = session.command("spBv1.0/g/DCMD/n1/dev", data, retained)
        if request is None:
            return 0
        if not isinstance(request, WriteRequest):
            raise Garbage(f"not a request: {request!r}")
        if request.problem is not None:
            return 0
        if retained:
            raise Garbage("a retained DCMD was taken")
        written = 0
        for name, value in request.writes:  # validated whole: any refusal refuses them all
            written += _check_write(device, name, value, data[:60])
        return written

    return generate, check


@target("sparkplug-ncmd")
def sparkplug_ncmd(rng: random.Random) -> tuple[Generate, Check]:
    """NCMD payloads: a Rebirth only for `Node Control/Rebirth` = boolean true."""
    from edge_agent.inbound import Rejected
    from edge_agent.outputs.sparkplug import codec
    from edge_agent.outputs.sparkplug import sparkplug_b_pb2 as pb

    session, _ = _sparkplug_session()
    session.live = True
    names = [codec.REBIRTH, "Node Control/Reboot", "bdSeq", "x"]
    aliases = [session._aliases[codec.REBIRTH], 0, 1, 999]
    seeds = [pb.Payload(metrics=[_random_metric(rng, names, aliases)]).SerializeToString()
             for _ in range(50)]

    def generate() -> bytes:
        if rng.random() < 0.7:
            return pb.Payload(metrics=[_random_metric(rng, names, aliases)
                                       for _ in range(rng.randint(1, 3))]).SerializeToString()
        return hostile_bytes(rng, seeds)

    def check(data: bytes) -> int:
        births = session.births
        outcome = session.command("spBv1.0/g/NCMD/n1", data, False)
        if outcome is not None and not isinstance(outcome, Rejected):
            raise Garbage(f"an NCMD became {outcome!r}")
        if session.births == births:
            return 0
        payload = codec.parse(data)
        asked = [m for m in payload.metrics
                 if (m.name == codec.REBIRTH or (not m.name and m.HasField("alias")
                                                 and m.alias == aliases[0]))
                 and m.WhichOneof("value") == "boolean_value" and m.boolean_value]
        if not asked:
            raise Garbage(f"a rebirth nobody asked for: {data[:60]!r}")
        return 1

    return generate, check


@target("sparkplug-state")
def sparkplug_state(rng: random.Random) -> tuple[Generate, Check]:
    """STATE payloads (JSON, read by edge_agent.inbound) through the session."""
    from edge_agent.inbound import MAX_TIMESTAMP_MS, BadPayload, Rejected, parse_state

    session, _ = _sparkplug_session()
    values = [b"true", b"false", b"1", b"0", b'"true"', b"null", b"1e999", b"-1", b"9" * 400,
              b"1764151200000", b"1764151200000.0", b"1.5", b"NaN", b"[]", b"{}",
              b"9223372036854775807", b"9223372036854775808", b"-0"]
    seeds = [b'{"online": %s, "timestamp": %s}' % (o, t) for o in values[:4] for t in values[9:11]]

    def generate() -> bytes:
        if rng.random() < 0.6:
            return b'{"online": %s, "timestamp": %s}' % (rng.choice(values), rng.choice(values))
        return hostile_bytes(rng, seeds)

    def check(data: bytes) -> int:
        outcome = session.command("spBv1.0/STATE/host", data, True)
        if outcome is not None and not isinstance(outcome, Rejected):
            raise Garbage(f"a STATE became {outcome!r}")
        try:
            online, ts = parse_state(data)
        except BadPayload:
            if outcome is None and data:
                raise Garbage(f"an unreadable STATE was taken: {data[:60]!r}") from None
            return 0
        if type(online) is not bool or type(ts) is not int or not 0 <= ts <= MAX_TIMESTAMP_MS:
            raise Garbage(f"STATE read as {online!r}, {ts!r}: {data[:60]!r}")
        return 1

    return generate, check


# -- running --------------------------------------------------------------------------------
@dataclass
class Result:
    inputs: int = 0
    rejected: int = 0
    checked: int = 0
    crashes: int = 0
    garbage: int = 0
    seconds: float = 0.0
    examples: list[str] | None = None

    def add(self, other: Result) -> None:
        for key in ("inputs", "rejected", "checked", "crashes", "garbage"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.seconds = max(self.seconds, other.seconds)
        self.examples = (self.examples or []) + (other.examples or [])


def run(name: str, inputs: int, seed: int) -> Result:
    """Runs one target; the drivers' own fault logs are silenced meanwhile (they count)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        return _run(name, inputs, seed)
    finally:
        structlog.configure(**saved)


def _run(name: str, inputs: int, seed: int) -> Result:
    spec = TARGETS[name]
    rng = random.Random(f"{name}-{seed}")
    generate, check = spec.build(rng)
    result, examples = Result(), []
    started = time.perf_counter()
    for _ in range(inputs):
        item = generate()
        try:
            result.checked += check(item)
        except spec.rejects:
            result.rejected += 1
        except Garbage as exc:
            result.garbage += 1
            if len(examples) < 5:
                examples.append(f"garbage: {str(exc)[:300]}")
        except Exception as exc:  # every other exception is a crash, the thing looked for
            result.crashes += 1
            if len(examples) < 5:
                examples.append(f"crash: {type(exc).__name__}: {str(exc)[:200]} "
                                f"on {repr(item)[:200]}")
    result.inputs = inputs
    result.seconds = time.perf_counter() - started
    result.examples = examples
    return result


def _run_job(job: tuple[str, int, int]) -> tuple[str, Result]:
    name, inputs, seed = job
    return name, run(name, inputs, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="processes; inputs are split")
    parser.add_argument("--only", default="", help="comma-separated target names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    jobs = max(1, args.jobs)
    work = [(name, args.inputs // jobs + (1 if part < args.inputs % jobs else 0),
             args.seed * 1000 + part) for name in names for part in range(jobs)]
    totals = {name: Result() for name in names}
    started = time.perf_counter()
    if jobs == 1:
        results = map(_run_job, work)
    else:
        pool = multiprocessing.get_context("fork").Pool(jobs)
        results = pool.imap_unordered(_run_job, work)
    print(f"{'target':<10} {'inputs':>10} {'inputs/s':>9} {'rejected':>9} {'good checked':>13} "
          f"{'crashes':>7} {'garbage':>7}")
    for name, result in results:
        totals[name].add(result)
    failed = False
    for name in names:
        total = totals[name]
        # parts run side by side: the slowest part's time gives the aggregate rate
        rate = total.inputs / total.seconds if total.seconds else 0
        print(f"{name:<10} {total.inputs:>10} {rate:>9.0f} {total.rejected:>9} "
              f"{total.checked:>13} {total.crashes:>7} {total.garbage:>7}")
        for example in total.examples or []:
            print(f"    {example}")
        failed = failed or bool(total.crashes or total.garbage)
    print(f"total {time.perf_counter() - started:.0f} s, seed {args.seed}, jobs {jobs}, "
          f"{os.cpu_count()} cpus: {'FAILED' if failed else '0 crashes, 0 garbage'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
