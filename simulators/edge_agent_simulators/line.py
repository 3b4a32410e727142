"""Simulated line-based instruments on a pseudo-terminal: a weighing scale and a CSV sensor.

The scale speaks a subset of Mettler Toledo MT-SICS level 0/1, the de facto command set of
laboratory and industrial scales: `SI` (weight now), `S` (stable weight), `SIR` (weight now,
repeated), `Z` (zero), `@` (reset). An answer such as `S S     12.345 kg` carries the stability
flag (`S` stable, `D` dynamic), a signed value right-aligned in ten characters, and the unit.
The load cycles: empty pan, an item placed (the reading swings, flagged `D`), settled (`S`),
removed.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from edge_agent_simulators.pty import Pty
from edge_agent_simulators.running import Running
from edge_agent_simulators.waves import Wave


class PtyPort(Pty):
    """A pty for line-based instruments: commands arrive as lines, output goes out timed."""

    def __init__(self, on_line: Callable[[bytes], None] | None = None,
                 terminator: bytes = b"\r") -> None:
        super().__init__(self._received if on_line is not None else None)
        self._on_line, self._terminator = on_line, terminator
        self._buffer = b""
        self._timers: list[asyncio.Handle | None] = []

    def _received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            cut = min((i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n"))
                       if i >= 0), default=-1)
            if cut < 0:
                break
            line, self._buffer = self._buffer[:cut], self._buffer[cut + 1:]
            if line:
                self._on_line(line)  # type: ignore[misc]  # a callable attribute, not a method

    def every(self, period: float, tick: Callable[[], None]) -> None:
        """Calls `tick` every `period` seconds on a fixed schedule until closed."""
        slot = len(self._timers)
        self._timers.append(None)

        def run(due: float) -> None:
            tick()
            due += period
            self._timers[slot] = self._loop.call_at(max(due, self._loop.time()), run, due)
        self._timers[slot] = self._loop.call_soon(run, self._loop.time())

    def close(self) -> None:
        for timer in self._timers:
            if timer is not None:
                timer.cancel()
        super().close()


class SicsScale:
    """A weighing scale's state: its load cycle and its MT-SICS answers."""

    def __init__(self, unit: str = "kg", decimals: int = 3, capacity: float = 30.0,
                 cycle: float = 8.0, seed: int = 3) -> None:
        self.unit, self.decimals, self.capacity, self.cycle = unit, decimals, capacity, cycle
        self.seed = seed
        self.start = time.monotonic()
        self.zero = 0.0
        self.commands: Counter[str] = Counter()
        #: (monotonic time, command) of the latest commands: tests measure poll gaps on it
        self.received: deque[tuple[float, str]] = deque(maxlen=10_000)

    def reading(self, now: float | None = None) -> tuple[float, bool]:
        """(weight, stable) at monotonic time `now`."""
        elapsed = (now if now is not None else time.monotonic()) - self.start
        index, phase = divmod(elapsed / self.cycle, 1.0)
        rng = random.Random(self.seed * 1_000_003 + int(index))
        load = round(rng.uniform(0.2, self.capacity * 0.8), self.decimals)
        drift = rng.choice((-2, -1, 0, 1, 2)) * 10 ** -self.decimals  # an empty pan's zero drift
        if phase < 0.2:
            weight, stable = drift, True
        elif phase < 0.35:  # placing the load: a damped swing around it
            t = (phase - 0.2) / 0.15
            weight, stable = load * (1 - math.exp(-4 * t) * math.cos(12 * t)), False
        elif phase < 0.8:
            weight, stable = load, True
        elif phase < 0.9:  # lifting it off
            weight, stable = load * (1 - (phase - 0.8) / 0.1) * 1.02, False
        else:
            weight, stable = -drift, True
        return round(weight - self.zero, self.decimals), stable

    def weight_line(self, stable_only: bool = False) -> bytes:
        weight, stable = self.reading()
        if weight > self.capacity:
            return b"S +\r\n"
        if stable_only and not stable:
            return b"S I\r\n"  # cannot execute now (not stable)
        flag = "S" if stable else "D"
        return f"S {flag} {weight:>10.{self.decimals}f} {self.unit}\r\n".encode("ascii")

    def answer(self, command: str) -> bytes | None:
        """The reply to one command line (without its terminator); None starts no reply."""
        self.commands[command] += 1
        self.received.append((time.monotonic(), command))
        if command == "SI":
            return self.weight_line()
        if command == "S":
            return self.weight_line(stable_only=True)
        if command == "Z":
            self.zero += self.reading()[0]
            return b"Z A\r\n"
        if command == "@":
            return b'I4 A "0123456789"\r\n'
        return b"ES\r\n"  # syntax error: the command is not known


class ScaleDevice:
    """A SICS scale on a pty, answering commands and, after `SIR`, repeating its weight."""

    def __init__(self, scale: SicsScale, repeat_interval: float = 0.2) -> None:
        self.scale = scale
        self.repeating = False
        self.port = PtyPort(self._command)
        self.port.every(repeat_interval, self._repeat)

    @property
    def path(self) -> str:
        return self.port.path

    def _command(self, line: bytes) -> None:
        command = line.decode("ascii", "replace").strip()
        if command == "SIR":
            self.repeating = True
            return
        if command == "@":
            self.repeating = False
        reply = self.scale.answer(command)
        if reply is not None:
            self.port.write(reply)

    def _repeat(self) -> None:
        if self.repeating:
            self.port.write(self.scale.weight_line())

    def close(self) -> None:
        self.port.close()


class CsvSensor:
    """An Arduino-style sensor printing `temperature,humidity,pressure` lines at a fixed rate.

    Like a sketch after reset it first prints a header line. `noise` is the probability that a
    line is replaced by garbage (a loose connector, a baud-rate glitch).
    """

    HEADER = b"temperature_c,humidity_pct,pressure_hpa\r\n"

    def __init__(self, rate: float = 2.0, noise: float = 0.0, seed: int = 5,
                 values: dict[str, object] | None = None) -> None:
        values = values or {}
        self.waves = [
            Wave(values.get("temperature", {"sine": {"offset": 21.5, "amplitude": 1.5,
                                                     "period": 60}})),
            Wave(values.get("humidity", {"random_walk": {"start": 45, "step": 0.3,
                                                         "min": 30, "max": 60}})),
            Wave(values.get("pressure", {"random_walk": {"start": 1013.2, "step": 0.05,
                                                         "min": 990, "max": 1030}})),
        ]
        self.noise, self.rng = noise, random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.sent: list[tuple[float, float, float]] = []
        self.port = PtyPort()
        self.port.write(self.HEADER)
        self.port.every(1 / rate, self._tick)

    @property
    def path(self) -> str:
        return self.port.path

    def _tick(self) -> None:
        if self.noise and self.rng.random() < self.noise:
            self.injected["noise"] += 1
            garbage = bytes(self.rng.choice(b"\x00\xff\x8e?#;.xyz0123") for _ in range(12))
            self.port.write(garbage + b"\r\n")
            return
        t, h, p = (round(w.value(), 2) for w in self.waves)
        self.sent.append((t, h, p))
        del self.sent[:-1000]
        self.port.write(f"{t:.2f},{h:.2f},{p:.2f}\r\n".encode("ascii"))

    def close(self) -> None:
        self.port.close()


SICS_PATTERN = r"^S\s+(?P<stable>[SD])\s+(?P<weight>[-+]?\d+(?:\.\d+)?)\s+(?P<unit>\S+)\s*$"


async def start_scale(spec: Any, running: dict[str, Any]) -> Any:
    """`kind: scale`: keys `unit`, `decimals`, `capacity`, `cycle` (s per load cycle),
    `mode` (`poll`: the agent sends SI every interval; `stream`: it sends SIR once)."""
    options = dict(spec.model_extra or {})
    unit = str(options.get("unit", "kg"))
    scale = SicsScale(unit=unit, decimals=int(options.get("decimals", 3)),
                      capacity=float(options.get("capacity", 30.0)),
                      cycle=float(options.get("cycle", 8.0)))
    device = ScaleDevice(scale, repeat_interval=spec.interval)
    config: dict[str, Any] = {
        "name": spec.name, "driver": "line", "port": device.path, "baudrate": 9600,
        "interval": spec.interval, "timeout": 1.0, "format": "regex", "pattern": SICS_PATTERN,
        "fields": [{"name": "weight", "source": "weight", "type": "float", "unit": unit},
                   {"name": "stable", "source": "stable", "type": "bool",
                    "map": {"S": True, "D": False}}],
        "quality": [{"source": "stable", "good": ["S"]},
                    {"source": "unit", "good": [unit], "otherwise": "bad"}]}
    if options.get("mode", "poll") == "stream":
        config.update(mode="stream", setup="SIR\r\n")
    else:
        config.update(mode="poll", command="SI\r\n")
    return Running(spec.name, device.path, config, device)


async def start_csv_sensor(spec: Any, running: dict[str, Any]) -> Any:
    """`kind: csv-sensor`: keys `rate` (lines/s), `noise` (probability of a garbage line),
    `values` ({temperature|humidity|pressure: a wave spec})."""
    options = dict(spec.model_extra or {})
    sensor = CsvSensor(rate=float(options.get("rate", 1 / spec.interval)),
                       noise=float(options.get("noise", 0.0)), values=options.get("values"))
    config = {"name": spec.name, "driver": "line", "port": sensor.path, "baudrate": 115200,
              "mode": "stream", "format": "delimited", "delimiter": ",",
              "ignore": "^[A-Za-z]",  # the header the sketch prints after a reset
              "fields": [{"name": "temperature", "source": 0, "unit": "Cel"},
                         {"name": "humidity", "source": 1, "unit": "%"},
                         {"name": "pressure", "source": 2, "unit": "hPa"}]}
    return Running(spec.name, sensor.path, config, sensor)
