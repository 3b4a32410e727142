"""IEC 62056-21 mode C, the bytes of it: sign-on, identification, option select, data readout.

Pure functions (bytes in, values out), so the simulator builds its answers with the same code
the driver checks them with, and the parser can be fuzzed without a port. Written here rather
than taken from a library: the protocol is a handful of ASCII frames and one XOR checksum, and
no maintained Python library implements mode C without also owning the serial I/O.

A readout is:
  master  `/?<address>!\\r\\n`                     at 300 baud 7E1
  meter   `/XXXZ<identification>\\r\\n`            XXX manufacturer, Z its fastest baud rate
  master  `ACK 0 Z 0 \\r\\n`                        option select: normal protocol, rate Z, readout
  both switch to rate Z
  meter   `STX <data lines> !\\r\\n ETX BCC`         BCC = XOR of every byte after STX up to ETX
A data line is `<code>(<value>[*<unit>])`, e.g. `1.8.0(0012345.678*kWh)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STX, ETX, ACK, NAK = 0x02, 0x03, 0x06, 0x15
#: mode C baud rate characters (IEC 62056-21, 6.3.14); A-I are mode B and not used here
BAUD_RATES = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800, "5": 9600, "6": 19200}
#: the longest identification line the standard allows (/ + 3 + 1 + 16 + CR LF), with slack
MAX_IDENT = 64
#: a readout larger than this is not a meter talking: the driver gives up on it
MAX_READOUT = 64 * 1024

_IDENT = re.compile(rb"^/([A-Za-z]{2}[A-Za-z])([0-9A-I])(\\W)?([\x21-\x7e ]{1,32})\r\n$")
_LINE = re.compile(r"^([0-9A-Za-z:.\-*&]{1,32})((?:\([^()]{0,128}\))+)$")
_VALUE = re.compile(r"\(([^()]*)\)")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")

#: the meter's unit text (upper-cased) -> (UCUM code, factor to it)
UNITS: dict[str, tuple[str, float]] = {
    "KWH": ("kW.h", 1.0), "WH": ("W.h", 1.0), "MWH": ("MW.h", 1.0),
    "KVARH": ("kvar.h", 1.0), "VARH": ("var.h", 1.0), "KVAH": ("kVA.h", 1.0),
    "KW": ("kW", 1.0), "W": ("W", 1.0), "MW": ("MW", 1.0), "KVAR": ("kvar", 1.0),
    "VAR": ("var", 1.0), "KVA": ("kVA", 1.0), "VA": ("VA", 1.0),
    "V": ("V", 1.0), "KV": ("kV", 1.0), "A": ("A", 1.0), "HZ": ("Hz", 1.0),
    "M3": ("m3", 1.0), "L": ("L", 1.0), "C": ("Cel", 1.0), "°C": ("Cel", 1.0),
    "K": ("K", 1.0), "H": ("h", 1.0), "S": ("s", 1.0), "GJ": ("GJ", 1.0), "MJ": ("MJ", 1.0),
    "%": ("%", 1.0),
}
#: UCUM code -> (base, factor): values in kW.h and W.h compare after conversion
_BASE = {"kW.h": ("W.h", 1e3), "MW.h": ("W.h", 1e6), "W.h": ("W.h", 1.0),
         "kvar.h": ("var.h", 1e3), "var.h": ("var.h", 1.0), "kW": ("W", 1e3), "MW": ("W", 1e6),
         "W": ("W", 1.0), "kvar": ("var", 1e3), "var": ("var", 1.0), "kV": ("V", 1e3),
         "V": ("V", 1.0), "kVA": ("VA", 1e3), "VA": ("VA", 1.0), "kVA.h": ("VA.h", 1e3)}


class FrameError(ValueError):
    """A frame that fails a check: its `kind` is counted by the driver (bcc, ident, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Identification:
    manufacturer: str
    baud_char: str
    ident: str

    @property
    def max_baudrate(self) -> int:
        """The meter's fastest rate; a mode B/E character counts as 300 (no switch offered)."""
        return BAUD_RATES.get(self.baud_char, 300)


@dataclass(frozen=True, slots=True)
class DataSet:
    """One data line: the code as the meter wrote it, its first value and unit (raw text)."""

    code: str
    value: str
    unit: str | None


def sign_on(address: str = "") -> bytes:
    return f"/?{address}!\r\n".encode("ascii")


def option_select(baudrate: int) -> bytes:
    """ACK for a data readout (mode control 0) at `baudrate`, normal protocol (0)."""
    char = next(c for c, rate in BAUD_RATES.items() if rate == baudrate)
    return bytes([ACK]) + f"0{char}0\r\n".encode("ascii")


def parse_option_select(frame: bytes) -> int | None:
    """The baud rate a master asked for in an option select, or None if it is not one."""
    if len(frame) == 6 and frame[0] == ACK and frame[4:] == b"\r\n" and frame[1:2] == b"0":
        return BAUD_RATES.get(chr(frame[2]))
    return None


def identification(manufacturer: str, baudrate: int, ident: str) -> bytes:
    char = next(c for c, rate in BAUD_RATES.items() if rate == baudrate)
    return f"/{manufacturer}{char}{ident}\r\n".encode("ascii")


def parse_identification(line: bytes) -> Identification:
    match = _IDENT.match(line)
    if match is None:
        raise FrameError("ident", f"not an identification message: {line[:80]!r}")
    manufacturer, char, _, ident = match.groups()
    return Identification(manufacturer.decode(), char.decode(), ident.decode().strip())


def bcc(data: bytes) -> int:
    """XOR of every byte: give it what follows STX, up to and including ETX."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def readout(lines: list[str]) -> bytes:
    """A complete data message around `lines` (the simulator's side)."""
    body = ("".join(f"{line}\r\n" for line in lines) + "!\r\n").encode("ascii") + bytes([ETX])
    return bytes([STX]) + body + bytes([bcc(body)])


def readout_complete(buffer: bytes | bytearray) -> bool:
    """True once a data message's ETX and BCC have both arrived."""
    end = buffer.find(ETX)
    return end >= 0 and len(buffer) > end + 1


def parse_readout(message: bytes) -> list[DataSet]:
    """The data sets of one data message (STX ... ETX BCC); checks framing and BCC."""
    start = message.find(STX)
    end = message.find(ETX, start + 1) if start >= 0 else -1
    if start < 0 or end < 0 or len(message) < end + 2:
        raise FrameError("framing", "no complete STX ... ETX BCC message")
    body = message[start + 1:end + 1]
    if bcc(body) != message[end + 1]:
        raise FrameError("bcc", f"BCC mismatch: got {message[end + 1]:#04x}, "
                                f"computed {bcc(body):#04x}")
    try:
        text = body[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("encoding", "data block is not ASCII") from None
    sets: list[DataSet] = []
    for raw in text.replace("\r", "").split("\n"):
        line = raw.strip()
        if not line or line == "!":
            continue
        sets.append(parse_line(line))
    return sets


def parse_line(line: str) -> DataSet:
    match = _LINE.match(line)
    if match is None:
        raise FrameError("line", f"not a data line: {line[:80]!r}")
    code, values = match.groups()
    first = _VALUE.match(values).group(1)  # type: ignore[union-attr]  # _LINE checked it
    value, _, unit = first.partition("*")
    return DataSet(normalise_code(code), value.strip(), unit.strip() or None)


def normalise_code(code: str) -> str:
    """`1-0:1.8.0*255` and `1.8.0` name the same quantity: keep C.D.E (and F if not 255)."""
    _, _, rest = code.rpartition(":")
    rest, _, billing = rest.partition("*")
    rest = rest.split("&", 1)[0]
    return f"{rest}*{billing}" if billing and billing != "255" else rest


def typed_value(text: str) -> float | str:
    """A number where the meter wrote one (leading zeros and all), else the text as sent."""
    if _NUMBER.match(text):
        return float(text)
    return text


def ucum(unit: str | None) -> tuple[str | None, float]:
    """(UCUM code, factor) for a meter's unit text; unknown units pass through unchanged."""
    if unit is None:
        return None, 1.0
    return UNITS.get(unit.upper(), (unit, 1.0))


def convert(value: float, unit: str, target: str) -> float | None:
    """`value` in `unit` expressed in `target` (kW.h <-> W.h ...), None if incommensurable."""
    if unit == target:
        return value
    a, b = _BASE.get(unit), _BASE.get(target)
    if a is None or b is None or a[0] != b[0]:
        return None
    return value * a[1] / b[1]
