"""A simulated GNSS receiver on a pseudo-terminal, travelling a route and talking NMEA 0183.

Each epoch (`rate` per second) it sends a burst of RMC VTG GGA GSA GLL ZDA under one talker
id, built with the driver's own codec. Faults are per sentence, as on a real noisy line:
`bad_checksum` flips one character of the sentence body (the checksum no longer matches),
`truncated` cuts the sentence short (losing its line end half the time, so the next sentence
runs on), `noise` puts random bytes on the line. `truth` keeps what was sent per epoch, keyed
by GNSS time in epoch milliseconds, so tests can check each published fix exactly.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, OrderedDict
from datetime import UTC, datetime
from typing import Any

from edge_agent_drivers.nmea.codec import (
    format_latitude,
    format_longitude,
    format_sentence,
    parse_latitude,
    parse_longitude,
)
from edge_agent_simulators.line import PtyPort
from edge_agent_simulators.running import Running

EARTH_RADIUS = 6_371_000.0
KNOTS_PER_MS = 3600 / 1852
DEFAULT_ROUTE = [(48.8584, 2.2945), (48.8606, 2.3376), (48.8530, 2.3499), (48.8462, 2.3371)]
DEFAULT_SENTENCES = ("RMC", "VTG", "GGA", "GSA", "GLL", "ZDA")


class Route:
    """A closed polyline travelled at constant speed (flat-earth segments: short routes)."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        if len(points) < 2:
            raise ValueError("a route needs at least two points")
        self.points = [(float(a), float(b)) for a, b in points]
        pairs = list(zip(self.points, self.points[1:] + self.points[:1], strict=True))
        self.segments = [(a, b, *self._metres(a, b)) for a, b in pairs]
        self.length = sum(s[2] for s in self.segments)

    @staticmethod
    def _metres(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        north = math.radians(b[0] - a[0]) * EARTH_RADIUS
        east = math.radians(b[1] - a[1]) * EARTH_RADIUS * math.cos(math.radians(a[0] + b[0]) / 2)
        return math.hypot(north, east), math.degrees(math.atan2(east, north)) % 360

    def at(self, distance: float) -> tuple[float, float, float]:
        """(latitude, longitude, course) after `distance` metres along the route."""
        distance %= self.length
        for a, b, length, course in self.segments:
            if distance <= length:
                f = distance / length if length else 0.0
                return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, course
            distance -= length
        a, _, _, course = self.segments[-1]
        return a[0], a[1], course


class NmeaReceiver:
    """What the receiver says each epoch, with its faults; no I/O (see NmeaDevice)."""

    def __init__(self, route: list[tuple[float, float]] | None = None, speed: float = 12.0,
                 talker: str = "GN", altitude: float = 35.0, satellites: int = 11,
                 sentences: tuple[str, ...] = DEFAULT_SENTENCES, faults: dict[str, float] |
                 None = None, seed: int = 11) -> None:
        self.route = Route(route or DEFAULT_ROUTE)
        self.speed, self.talker, self.altitude = speed, talker, altitude
        self.satellites, self.sentences = satellites, sentences
        faults = faults or {}
        unknown = set(faults) - {"bad_checksum", "truncated", "noise"}
        if unknown:
            raise ValueError(f"unknown NMEA faults: {', '.join(sorted(unknown))}")
        self.faults = faults
        self.rng = random.Random(seed)
        self.start = time.monotonic()
        self.injected: Counter[str] = Counter()
        self.truth: OrderedDict[int, dict[str, float]] = OrderedDict()

    def epoch(self, wall: float | None = None) -> bytes:
        wall = time.time() if wall is None else wall
        gnss_ms = int(wall * 100) * 10  # receivers report to the centisecond
        moment = datetime.fromtimestamp(gnss_ms / 1000, UTC)
        hhmmss = f"{moment:%H%M%S}.{gnss_ms % 1000 // 10:02d}"
        lat, lon, course = self.route.at(self.speed * (time.monotonic() - self.start))
        lat_text, ns = format_latitude(lat)
        lon_text, ew = format_longitude(lon)
        altitude = round(self.altitude + 3 * math.sin(gnss_ms / 20_000), 1)
        knots = round(self.speed * KNOTS_PER_MS, 3)
        course = round(course, 1)
        self.truth[gnss_ms] = {"latitude": parse_latitude(lat_text, ns),  # as sent, rounded
                               "longitude": parse_longitude(lon_text, ew),
                               "altitude": altitude, "speed": knots / KNOTS_PER_MS,
                               "course": course, "satellites": self.satellites}
        while len(self.truth) > 2000:
            self.truth.popitem(last=False)
        fields = {
            "RMC": [hhmmss, "A", lat_text, ns, lon_text, ew, f"{knots:.3f}", f"{course:.1f}",
                    f"{moment:%d%m%y}", "", "", "A", "V"],
            "VTG": [f"{course:.1f}", "T", "", "M", f"{knots:.3f}", "N",
                    f"{knots * 1.852:.3f}", "K", "A"],
            "GGA": [hhmmss, lat_text, ns, lon_text, ew, "1", f"{self.satellites:02d}", "0.9",
                    f"{altitude:.1f}", "M", "47.0", "M", "", ""],
            "GSA": ["A", "3", *[f"{n:02d}" for n in range(1, 13)], "1.6", "0.9", "1.3", "1"],
            "GLL": [lat_text, ns, lon_text, ew, hhmmss, "A", "A"],
            "ZDA": [hhmmss, f"{moment:%d}", f"{moment:%m}", f"{moment:%Y}", "00", "00"],
        }
        return b"".join(self._faulty(format_sentence(self.talker, kind, fields[kind]))
                        for kind in self.sentences)

    def _faulty(self, sentence: bytes) -> bytes:
        rng, faults = self.rng, self.faults
        if faults.get("noise") and rng.random() < faults["noise"]:
            self.injected["noise"] += 1
            noise = bytes(rng.choice(b"\x00\x7f\x80\xfe\xffQ%&~")
                          for _ in range(rng.randint(3, 20)))
            sentence = noise + (b"\r\n" if rng.random() < 0.5 else b"") + sentence
        if faults.get("bad_checksum") and rng.random() < faults["bad_checksum"]:
            self.injected["bad_checksum"] += 1
            star = sentence.index(b"*")
            digits = [i for i in range(sentence.index(b"$") + 7, star)
                      if 48 <= sentence[i] <= 57]
            at = rng.choice(digits)
            new = rng.choice([d for d in b"0123456789" if d != sentence[at]])
            return sentence[:at] + bytes([new]) + sentence[at + 1:]
        if faults.get("truncated") and rng.random() < faults["truncated"]:
            self.injected["truncated"] += 1
            cut = rng.randint(sentence.index(b"$") + 1, sentence.index(b"*") - 1)
            return sentence[:cut] + (b"\r\n" if rng.random() < 0.5 else b"")
        return sentence


class NmeaDevice:
    """A receiver on a pty, sending an epoch every 1/rate seconds."""

    def __init__(self, receiver: NmeaReceiver, rate: float = 1.0) -> None:
        self.receiver = receiver
        self.port = PtyPort()
        self.port.every(1 / rate, lambda: self.port.write(receiver.epoch()))

    @property
    def path(self) -> str:
        return self.port.path

    def close(self) -> None:
        self.port.close()


def receiver_from_spec(options: dict[str, Any]) -> NmeaReceiver:
    route = options.get("route")
    return NmeaReceiver(
        route=[tuple(p) for p in route] if route else None,
        speed=float(options.get("speed", 12.0)), talker=str(options.get("talker", "GN")),
        altitude=float(options.get("altitude", 35.0)),
        satellites=int(options.get("satellites", 11)),
        sentences=tuple(options.get("sentences", DEFAULT_SENTENCES)),
        faults=options.get("faults"), seed=int(options.get("seed", 11)))


async def start_nmea(spec: Any, running: dict[str, Any]) -> Any:
    """`kind: nmea`: keys `rate` (epochs/s), `route` ([[lat, lon], ...]), `speed` (m/s),
    `talker`, `altitude`, `satellites`, `sentences`, `faults` ({bad_checksum, truncated,
    noise}: probabilities per sentence), `seed`."""
    options = dict(spec.model_extra or {})
    device = NmeaDevice(receiver_from_spec(options), rate=float(options.get("rate", 1.0)))
    config = {"name": spec.name, "driver": "nmea", "port": device.path, "baudrate": 9600}
    return Running(spec.name, device.path, config, device)
