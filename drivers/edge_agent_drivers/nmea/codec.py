"""NMEA 0183 codec: sentences in, position readings out; sentences out for simulators. No I/O.

Why not a parsing library: the six sentences read here need their framing (a `$`, an XOR
checksum) and a table of field positions; pynmea2 and pynmeagps build an object per sentence
with every field typed, which costs more CPU than the rest of the agent's path for the
readings, and their error surfaces differ per sentence type. The field layouts below follow
NMEA 0183 4.11 and accept the older 2.x layouts (no mode indicator, legacy VTG).

Values are raw in NMEA's own units where NMEA has one: speed in knots (the driver declares the
scale to m/s, so the core converts), altitude in metres, angles in degrees.

A sentence with a good checksum can still carry nonsense (a receiver bug, a simulator, an
attacker on the line): numbers are read strictly (NMEA's digits, a dot and a sign, nothing
Python's `float()` also takes such as `1_000`, `inf`, `nan` or `1e300`), and every value
field has a physical range (`RANGES`). A value outside it is published as bad (value None)
and named in `Decoded.rejected`, so the driver counts it; the sentence's other values stand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import reduce
from operator import xor
from typing import NamedTuple

from edge_agent.sdk import BAD, GOOD, UNCERTAIN, Reading, Sample

#: the sentence types decoded; others (GSV, TXT, proprietary $P...) are passed over
SENTENCES = ("GGA", "RMC", "VTG", "GSA", "GLL", "ZDA")
KNOTS_PER_KMH = 1 / 1.852
_HEX = b"0123456789ABCDEFabcdef"

#: metric -> (lowest, highest) value a real receiver can report, in the codec's units.
#: Altitude: below the lowest land (-430 m) and geoid swings, up to the edge of space.
#: Speed (knots): up to orbital velocity (~15,000 kn); receivers cap at 1,000 kn (COCOM).
#: fix_quality 0-8 (GGA, NMEA 0183 4.11), fix_type 1-3 (GSA); DOPs are 0-99.99 by the
#: standard's field width (99.99 is "unknown" on many receivers).
RANGES: dict[str, tuple[float, float]] = {
    "latitude": (-90.0, 90.0),
    "longitude": (-180.0, 180.0),
    "altitude": (-1_000.0, 100_000.0),
    "speed": (0.0, 20_000.0),
    "course": (0.0, 360.0),
    "satellites": (0, 255),
    "fix_quality": (0, 8),
    "fix_type": (1, 3),
    "hdop": (0.0, 100.0),
    "pdop": (0.0, 100.0),
    "vdop": (0.0, 100.0),
    # UTC epoch ms from the GPS epoch (1980-01-06) to the end of 2099
    "gnss_time": (315_964_800_000, 4_102_444_800_000),
}
#: the only number syntax NMEA uses: optional minus, digits, optional fraction
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
_INTEGER = re.compile(r"[0-9]{1,9}\Z")
_TIME = re.compile(r"[0-9]{6}(?:\.[0-9]{0,9})?\Z")
_MINUTES = re.compile(r"[0-9]{2}(?:\.[0-9]*)?\Z")


class NmeaError(ValueError):
    """A line that is not a usable sentence; `kind` names why, for the fault counters."""

    kind = "parse"


class ChecksumError(NmeaError):
    kind = "checksum"


class TruncatedError(NmeaError):
    """The sentence ends before its checksum (lost bytes, a cut line)."""

    kind = "truncated"


class NoiseError(NmeaError):
    """Bytes that are no sentence at all (line noise, a wrong baud rate)."""

    kind = "noise"


class Sentence(NamedTuple):
    talker: str  # GP, GN, GL, GA, GB, BD, ...
    type: str  # GGA, RMC, ...
    fields: list[str]  # the data fields after the address field
    noise: bool  # bytes preceded the `$` on this line (counted, the sentence is kept)


def checksum(body: bytes) -> int:
    """XOR of every byte between `$` and `*`."""
    return reduce(xor, body, 0)


def parse_sentence(line: bytes, require_checksum: bool = True) -> Sentence:
    """Frames and checks one line. Raises NmeaError (or a subclass naming the fault).

    If a sentence lost its end, the next one runs on in the same line: the last `$` starts
    the sentence that counts, and whatever came before is reported through `noise`.
    """
    start = line.rfind(b"$")
    if start < 0:
        raise NoiseError("no '$' in the line")
    end = line.find(b"*", start)
    if end < 0:
        if require_checksum:
            raise TruncatedError("the sentence has no checksum")
        body = line[start + 1:].rstrip()
    else:
        body = line[start + 1:end]
        given = line[end + 1:end + 3]
        if len(given) < 2 or given[0] not in _HEX or given[1] not in _HEX:
            raise TruncatedError("the checksum is cut short")
        if int(given, 16) != checksum(body):
            raise ChecksumError(f"checksum {given.decode()} != {checksum(body):02X}")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise NmeaError("non-ASCII bytes in the sentence") from None
    address, _, rest = text.partition(",")
    if len(address) != 5 or not address.isalnum():
        raise NmeaError(f"'{address}' is not a talker and sentence type")
    return Sentence(address[:2], address[2:], rest.split(","), start > 0)


# -- fields ---------------------------------------------------------------------------------
def parse_angle(value: str, hemisphere: str, negative: str, positive: str,
                limit: float) -> float | None:
    """`ddmm.mmmm`/`dddmm.mmmm` and a hemisphere letter to signed decimal degrees."""
    if not value:
        return None
    if hemisphere not in (negative, positive):
        raise NmeaError(f"'{hemisphere}' is not {positive} or {negative}")
    dot = value.find(".")
    split = (len(value) if dot < 0 else dot) - 2  # minutes are the two digits before the dot
    whole = value[:split]
    if not 1 <= split <= 3 or not _INTEGER.match(whole) or not _MINUTES.match(value[split:]):
        raise NmeaError(f"'{value}' is not an angle")
    degrees, minutes = int(whole), float(value[split:])
    if not 0 <= minutes < 60 or degrees > limit:
        raise NmeaError(f"'{value}' is not an angle")
    angle = degrees + minutes / 60
    if angle > limit:
        raise NmeaError(f"'{value}' is out of range")
    return -angle if hemisphere == negative else angle


def parse_latitude(value: str, hemisphere: str) -> float | None:
    return parse_angle(value, hemisphere, "S", "N", 90)


def parse_longitude(value: str, hemisphere: str) -> float | None:
    return parse_angle(value, hemisphere, "W", "E", 180)


def parse_time(value: str) -> int | None:
    """`hhmmss.ss` to milliseconds of the UTC day."""
    if not value:
        return None
    if not _TIME.match(value):
        raise NmeaError(f"'{value}' is not hhmmss")
    hours, minutes, seconds = int(value[:2]), int(value[2:4]), float(value[4:])
    if hours > 23 or minutes > 59 or seconds >= 61:
        raise NmeaError(f"'{value}' is not a time of day")
    return (hours * 3600 + minutes * 60) * 1000 + round(seconds * 1000)


def utc_ms(day: int, month: int, year: int, time_ms: int) -> int:
    try:
        midnight = datetime(year, month, day, tzinfo=UTC)
    except (ValueError, OverflowError):
        raise NmeaError(f"{year}-{month}-{day} is not a date") from None
    return int(midnight.timestamp()) * 1000 + time_ms


def _integer(value: str) -> int:
    """A date part: plain digits only (`int()` would also take ` 7`, `+7` and `0_7`)."""
    if not _INTEGER.match(value):
        raise NmeaError(f"'{value}' is not a number")
    return int(value)


def _number(value: str, convert: Callable[[str], float | int] = float) -> float | int | None:
    """A numeric field in NMEA's own syntax; None when empty; a ValueError otherwise."""
    if not value:
        return None
    if not (_INTEGER if convert is int else _DECIMAL).match(value):
        raise ValueError(f"'{value}' is not an NMEA number")
    return convert(value)


# -- sentences to readings ------------------------------------------------------------------
class Decoded(NamedTuple):
    time_ms: int | None  # UTC time of day the sentence is about: its epoch; None if it has none
    readings: list[Reading]
    #: metrics whose field was malformed or out of range: published as bad, counted
    rejected: tuple[str, ...] = ()


class _Readings(list[Reading]):
    """The readings of one sentence, and the metrics whose value failed its check."""

    def __init__(self) -> None:
        super().__init__()
        self.rejected: list[str] = []

    def add(self, metric: str, value: float | int | None, quality: str) -> float | int | None:
        """Adds `value` if it is inside the metric's range; returns it then, else None."""
        if value is None:
            return None
        low, high = RANGES[metric]
        if low <= value <= high:  # NaN never passes
            self.append(Reading(metric, value, quality))
            return value
        self.reject(metric)
        return None

    def number(self, metric: str, text: str, quality: str,
               convert: Callable[[str], float | int] = float) -> float | int | None:
        """Adds the numeric field `text` as `metric`; returns the value if it was valid."""
        try:
            value = _number(text, convert)
        except ValueError:
            self.reject(metric)
            return None
        return self.add(metric, value, quality)

    def date(self, metric: str, day: str, month: str, year: str, time_ms: int,
             century: bool = False) -> None:
        """Adds the UTC instant of a date and time of day; a broken date is rejected alone."""
        try:
            full_year = _integer(year)
            if century:  # RMC's two-digit year: 80-99 is the 1900s (GPS began in 1980)
                full_year += 2000 if full_year < 80 else 1900
            instant = utc_ms(_integer(day), _integer(month), full_year, time_ms)
        except NmeaError:
            self.reject(metric)
            return
        self.add(metric, instant, GOOD)

    def reject(self, metric: str) -> None:
        self.rejected.append(metric)
        self.append(Reading(metric, None, BAD))

    def done(self, time_ms: int | None) -> Decoded:
        return Decoded(time_ms, list(self), tuple(self.rejected))


def _field(fields: list[str], index: int) -> str:
    return fields[index] if index < len(fields) else ""


def _need(fields: list[str], count: int, kind: str) -> None:
    if len(fields) < count:
        raise TruncatedError(f"{kind} has {len(fields)} fields, at least {count} expected")


def _gga(f: list[str]) -> Decoded:
    _need(f, 9, "GGA")
    out = _Readings()
    fix = out.number("fix_quality", f[5], GOOD, int)
    # 1 GPS, 2 DGPS, 3 PPS, 4 RTK, 5 float RTK; 0 none, 6 dead reckoning, 7 manual, 8 sim
    quality = GOOD if fix is not None and 1 <= fix <= 5 else UNCERTAIN
    out.add("latitude", parse_latitude(f[1], f[2]), quality)
    out.add("longitude", parse_longitude(f[3], f[4]), quality)
    out.number("altitude", f[8], quality)
    out.number("satellites", f[6], GOOD, int)
    out.number("hdop", f[7], GOOD)
    return out.done(parse_time(f[0]))


def _rmc(f: list[str]) -> Decoded:
    _need(f, 9, "RMC")
    valid = f[1] == "A" and _field(f, 11) not in ("N", "E")
    quality = GOOD if valid else UNCERTAIN
    time_ms = parse_time(f[0])
    out = _Readings()
    out.add("latitude", parse_latitude(f[2], f[3]), quality)
    out.add("longitude", parse_longitude(f[4], f[5]), quality)
    out.number("speed", f[6], quality)
    out.number("course", f[7], quality)
    date = f[8]
    if time_ms is not None and date:
        parts = (date[:2], date[2:4], date[4:]) if len(date) == 6 else ("",) * 3
        out.date("gnss_time", *parts, time_ms, century=True)
    return out.done(time_ms)


def _vtg(f: list[str]) -> Decoded:
    if len(f) >= 8 and f[1] == "T":  # NMEA 2.3+: course,T,course,M,knots,N,km/h,K[,mode]
        course, knots, kmh, mode = f[0], f[4], f[6], _field(f, 8)
    else:  # NMEA 1.x/2.0: course true, course magnetic, knots, km/h
        _need(f, 4, "VTG")
        course, knots, kmh, mode = f[0], f[2], f[3], ""
    quality = UNCERTAIN if mode in ("N", "E") else GOOD
    out = _Readings()
    out.number("course", course, quality)
    if knots or not kmh:
        out.number("speed", knots, quality)
    else:
        try:
            speed = _number(kmh)
        except ValueError:
            out.reject("speed")
        else:
            out.add("speed", speed * KNOTS_PER_KMH if speed is not None else None, quality)
    return out.done(None)


def _gsa(f: list[str]) -> Decoded:
    _need(f, 17, "GSA")
    out = _Readings()
    out.number("fix_type", f[1], GOOD, int)  # 1 none, 2 2D, 3 3D
    out.number("pdop", f[14], GOOD)
    out.number("hdop", f[15], GOOD)
    out.number("vdop", f[16], GOOD)
    return out.done(None)


def _gll(f: list[str]) -> Decoded:
    _need(f, 4, "GLL")
    valid = _field(f, 5) in ("A", "") and _field(f, 6) not in ("N", "E")
    quality = GOOD if valid else UNCERTAIN
    out = _Readings()
    out.add("latitude", parse_latitude(f[0], f[1]), quality)
    out.add("longitude", parse_longitude(f[2], f[3]), quality)
    return out.done(parse_time(_field(f, 4)))


def _zda(f: list[str]) -> Decoded:
    _need(f, 4, "ZDA")
    time_ms = parse_time(f[0])
    out = _Readings()
    if time_ms is not None and f[1] and f[2] and f[3]:
        out.date("gnss_time", f[1], f[2], f[3], time_ms)
    return out.done(time_ms)


DECODERS: dict[str, Callable[[list[str]], Decoded]] = {
    "GGA": _gga, "RMC": _rmc, "VTG": _vtg, "GSA": _gsa, "GLL": _gll, "ZDA": _zda}


def decode(sentence: Sentence) -> Decoded | None:
    """The readings of a checked sentence; None for types not decoded here."""
    decoder = DECODERS.get(sentence.type)
    if decoder is None:
        return None
    try:
        return decoder(sentence.fields)
    except NmeaError:
        raise
    except (ValueError, IndexError, OverflowError) as exc:
        raise NmeaError(f"{sentence.type}: {exc}") from None


# -- epochs ---------------------------------------------------------------------------------
class EpochAssembler:
    """Gathers the sentences of one fix epoch into one sample.

    A receiver sends a burst of sentences per fix (e.g. RMC VTG GGA GSA GLL), all about the
    same instant. The burst ends, and a sample is released, when a sentence carries another
    UTC time, when a sentence type repeats (a receiver sends each once per epoch, except GSA:
    one per constellation), or when the line falls silent (`flush()`, called by the driver
    after `epoch_gap`). Later sentences of an epoch overwrite earlier values of a metric
    (except with a rejected one). The sample's `ts` is when the epoch's first byte was read.
    """

    __slots__ = ("_seen", "_time", "_ts", "_values")

    def __init__(self) -> None:
        self._values: dict[str, Reading] = {}
        self._seen: set[str] = set()
        self._time: int | None = None
        self._ts = 0

    @property
    def pending(self) -> bool:
        return bool(self._values)

    def add(self, sentence_type: str, decoded: Decoded, ts_ms: int) -> Sample | None:
        """Adds one sentence; returns the previous epoch's sample if this one began a new one."""
        done = None
        time_ms = decoded.time_ms
        if self._values and (
                (time_ms is not None and self._time is not None and time_ms != self._time)
                or (sentence_type in self._seen and sentence_type != "GSA")):
            done = self.flush()
        if not self._values and not self._seen:
            self._ts = ts_ms
        self._seen.add(sentence_type)
        if time_ms is not None:
            self._time = time_ms
        values = self._values
        for reading in decoded.readings:
            # a value rejected by one sentence does not erase what another gave this epoch
            if reading.value is not None or reading.metric not in values:
                values[reading.metric] = reading
        return done

    def flush(self) -> Sample | None:
        values = self._values
        self._seen = set()
        self._time = None
        if not values:
            return None
        self._values = {}
        return Sample(self._ts, list(values.values()))


# -- encoding (simulators, tests) -----------------------------------------------------------
def format_sentence(talker: str, sentence_type: str, fields: list[str]) -> bytes:
    body = f"{talker}{sentence_type},{','.join(fields)}".encode("ascii")
    return b"$%s*%02X\r\n" % (body, checksum(body))


def format_angle(angle: float, positive: str, negative: str, width: int,
                 decimals: int = 5) -> tuple[str, str]:
    """Signed decimal degrees to (`dddmm.mmmmm`, hemisphere)."""
    magnitude = abs(angle)
    degrees = int(magnitude)
    minutes = round((magnitude - degrees) * 60, decimals)
    if minutes >= 60:
        degrees, minutes = degrees + 1, 0.0
    text = f"{degrees:0{width}d}{minutes:0{3 + decimals}.{decimals}f}"
    return text, negative if angle < 0 else positive


def format_latitude(angle: float, decimals: int = 5) -> tuple[str, str]:
    return format_angle(angle, "N", "S", 2, decimals)


def format_longitude(angle: float, decimals: int = 5) -> tuple[str, str]:
    return format_angle(angle, "E", "W", 3, decimals)
