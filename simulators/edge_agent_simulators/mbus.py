"""Simulated wired M-Bus meters on one line (a pty standing in for the serial M-Bus master).

Meters answer SND_NKE with E5, REQ_UD2 with their variable data (RSP_UD, CI 72), and a
secondary-address select (wildcards `F`) with E5 when it matches their identification. A
heat meter spreads its records over two telegrams (the first ends with DIF 1F, "more records
follow") and advances only when the master toggles the frame count bit, as EN 13757-2 asks;
a repeated request gets the same telegram again. When several meters answer at once (a
wildcard select matching more than one), their answers collide into garbage, as on a real
bus. Faults, per answer: `bad_checksum`, `silence`.
"""

from __future__ import annotations

import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from edge_agent_drivers.mbus import frames
from edge_agent_simulators.pty import Pty
from edge_agent_simulators.running import Running

MEDIUM_HEAT, MEDIUM_WATER = 0x04, 0x07


def bcd(number: int, size: int) -> bytes:
    digits = f"{number:0{size * 2}d}"
    return bytes(int(digits[i:i + 2], 16) for i in range(len(digits) - 2, -2, -2))


def manufacturer_code(text: str) -> int:
    a, b, c = (ord(ch) - 64 for ch in text.upper())
    return (a << 10) | (b << 5) | c


class Meter:
    """One meter: identification, primary address, and its records as telegrams of bytes."""

    def __init__(self, ident: int, address: int, manufacturer: str, medium: int,
                 telegrams: Callable[[], list[bytes]]) -> None:
        self.ident, self.address = f"{ident:08d}", address
        self.manufacturer, self.medium = manufacturer, medium
        self._telegrams = telegrams
        self.access = 0
        self.selected = False
        self.next_index = 0
        self.last_fcb: bool | None = None
        self.last_answer: bytes | None = None
        self.requests: Counter[str] = Counter()

    def reset(self) -> None:
        self.next_index, self.last_fcb, self.last_answer = 0, None, None

    def header(self) -> bytes:
        self.access = (self.access + 1) & 0xFF
        return (bcd(int(self.ident), 4) + struct.pack("<H", manufacturer_code(self.manufacturer))
                + bytes([0x01, self.medium, self.access, 0x00]) + b"\x00\x00")

    def answer(self, address: int, fcb: bool) -> bytes:
        """The RSP_UD to a REQ_UD2: the next telegram if FCB toggled, else the last again."""
        if self.last_answer is not None and fcb == self.last_fcb:
            return self.last_answer
        telegrams = self._telegrams()
        body = telegrams[self.next_index % len(telegrams)]
        self.next_index = (self.next_index + 1) % len(telegrams)
        self.last_fcb = fcb
        self.last_answer = frames.long_frame(0x08, address, 0x72, self.header() + body)
        return self.last_answer


def heat_meter(ident: int = 12345678, address: int = 5) -> Meter:
    """A heat meter: energy, volume, temperatures, power, flow, a billing-date value, tariff 1,
    a date, manufacturer data, over two telegrams."""
    start = time.monotonic()

    def telegrams() -> list[bytes]:
        t = time.monotonic() - start
        energy = 12345 + int(t)            # kWh (VIF 06: 10^3 Wh)
        volume = 54321 + int(t * 10)       # litres (VIF 13: 10^-3 m3)
        first = (bytes([0x04, 0x06]) + struct.pack("<I", energy)
                 + bytes([0x04, 0x13]) + struct.pack("<I", volume)
                 + bytes([0x02, 0x5B]) + struct.pack("<h", 70)          # flow 70 Cel
                 + bytes([0x02, 0x5F]) + struct.pack("<h", 50)          # return 50 Cel
                 + bytes([0x04, 0x2B]) + struct.pack("<i", 15000)       # power 15000 W
                 + bytes([0x04, 0x3B]) + struct.pack("<i", 650)         # flow 0.65 m3/h
                 + bytes([0x1F]))                                       # more records follow
        second = (bytes([0x44, 0x06]) + struct.pack("<I", 11111)       # storage 1: 11111 kWh
                  + bytes([0x84, 0x10, 0x06]) + struct.pack("<I", 2222)  # tariff 1: 2222 kWh
                  + bytes([0x04, 0x22]) + struct.pack("<I", 4242)       # on time 4242 h
                  + bytes([0x04, 0x6D, 0x1E, 0x0C, 0x02, 0x3C])        # date time
                  + bytes([0x0F, 0x01, 0x02, 0x03]))                    # manufacturer data
        return [first, second]

    return Meter(ident, address, "KAM", MEDIUM_HEAT, telegrams)


def water_meter(ident: int = 87654321, address: int = 7) -> Meter:
    start = time.monotonic()

    def telegrams() -> list[bytes]:
        volume = 123456 + int((time.monotonic() - start) * 5)  # litres
        return [bytes([0x04, 0x13]) + struct.pack("<I", volume)
                + bytes([0x04, 0x6D, 0x1E, 0x0C, 0x02, 0x3C])]

    return Meter(ident, address, "ZRI", MEDIUM_WATER, telegrams)


class MbusLine:
    """The meters' side of one M-Bus line on a pty."""

    def __init__(self, meters: list[Meter], faults: dict[str, float] | None = None,
                 seed: int = 13) -> None:
        self.meters = meters
        self.faults = faults or {}
        self._rng = random.Random(seed)
        self.reader = frames.FrameReader()
        self.pty = Pty(self._received)
        self.path = self.pty.path
        self.events: Counter[str] = Counter()

    def _received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                frame = self.reader.next()
            except frames.FrameError:
                self.events["bad_request"] += 1
                continue
            if frame is None:
                return
            self._handle(frame)

    def _handle(self, frame: frames.Frame) -> None:
        if frame.kind == "long":
            selection = frames.parse_select(frame)
            if selection is None or frame.address != frames.SELECTED:
                return
            pattern = selection[0]
            chosen = [m for m in self.meters if frames.matches(pattern, m.ident)]
            for meter in self.meters:
                meter.selected = meter in chosen
                meter.reset()
            self._reply([bytes([frames.ACK])] * len(chosen))
            return
        if frame.kind != "short":
            return
        control, address = frame.control, frame.address
        targets = [m for m in self.meters if self._addressed(m, address)]
        if control == frames.SND_NKE:
            for meter in targets:
                meter.reset()
                meter.requests["snd_nke"] += 1
                if address == frames.SELECTED:
                    meter.selected = False
            if address != frames.SELECTED:
                self._reply([bytes([frames.ACK])] * len(targets))
        elif control & ~frames.FCB == frames.REQ_UD2:
            fcb = bool(control & frames.FCB)
            answers = []
            for meter in targets:
                meter.requests["req_ud2"] += 1
                answers.append(meter.answer(address, fcb))
            self._reply(answers)

    @staticmethod
    def _addressed(meter: Meter, address: int) -> bool:
        if address == frames.SELECTED:
            return meter.selected
        return address in (meter.address, frames.BROADCAST_REPLY)

    def _reply(self, answers: list[bytes]) -> None:
        if not answers:
            return
        if self._fault("silence"):
            self.events["silent"] += 1
            return
        if len(answers) > 1:  # several meters drive the bus at once: the master reads garbage
            self.events["collision"] += 1
            # They never start in step: each answer lands a byte later than the one before,
            # and the line ANDs what overlaps (a meter pulls it to space).
            size = max(len(a) + i for i, a in enumerate(answers))
            shifted = [bytes([0xFF] * i) + a + bytes([0xFF] * (size - len(a) - i))
                       for i, a in enumerate(answers)]
            self.pty.write(bytes(_wired_and([s[k] for s in shifted]) for k in range(size)))
            return
        answer = answers[0]
        if len(answer) > 1 and self._fault("bad_checksum"):
            self.events["bad_checksum"] += 1
            answer = answer[:-2] + bytes([answer[-2] ^ 0x5A]) + answer[-1:]
        self.events["answers"] += 1
        self.pty.write(answer)

    def _fault(self, kind: str) -> bool:
        rate = float(self.faults.get(kind, 0.0))
        return rate > 0 and self._rng.random() < rate

    def close(self) -> None:
        self.pty.close()


def _wired_and(values: list[int]) -> int:
    """M-Bus slaves pull the line to space: simultaneous answers AND together."""
    out = 0xFF
    for value in values:
        out &= value
    return out


async def start_mbus(spec: Any, running: dict[str, Any]) -> Any:
    """`kind: mbus`: a line with a heat meter (primary 5, id 12345678, two telegrams) and a
    water meter (primary 7, id 87654321). Keys: `meters` (a list of `{type: heat|water,
    address, id}`), `faults` ({bad_checksum, silence}: probabilities per answer)."""
    options = dict(spec.model_extra or {})
    meters = []
    for entry in options.get("meters") or [{"type": "heat"}, {"type": "water"}]:
        make = heat_meter if entry.get("type", "heat") == "heat" else water_meter
        kwargs = {k: int(entry[v]) for k, v in (("ident", "id"), ("address", "address"))
                  if v in entry}
        meters.append(make(**kwargs))
    bus = MbusLine(meters, faults=options.get("faults"))
    config = {"name": spec.name, "driver": "mbus", "port": bus.path,
              "address": meters[0].address, "interval": spec.interval}
    return Running(spec.name, bus.path, config, bus)
