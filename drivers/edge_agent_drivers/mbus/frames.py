"""M-Bus link layer (EN 13757-2), the bytes of it: building requests, cutting answers out of a
byte stream and checking them. Pure functions; the variable data inside a long frame is decoded
by pyMeterBus (see records.py).

Frames: a single character `E5` (ACK); a short frame `10 C A CS 16`; a long frame
`68 L L 68 C A CI data CS 16`, where CS is the sum of C..data modulo 256 and L counts C..data.
"""

from __future__ import annotations

from dataclasses import dataclass

ACK = 0xE5
SHORT_START, LONG_START, STOP = 0x10, 0x68, 0x16
# C fields, master to slave
SND_NKE = 0x40   # link reset: the meter deselects and forgets its FCB state
SND_UD = 0x53    # send user data (used for the secondary address select)
REQ_UD2 = 0x5B   # request class 2 data, FCV set
FCB = 0x20       # frame count bit: toggled per new request, so a repeat is recognised
#: the address that reaches the meter selected by secondary address; 254 reaches any one
SELECTED, BROADCAST_REPLY = 0xFD, 0xFE
CI_SELECT = 0x52
CI_RESPONSES = frozenset({0x72, 0x76, 0x78, 0x7A})  # variable data respond (long/short header)
MAX_PRIMARY = 250


class FrameError(ValueError):
    """A frame that fails a check; `kind` is counted (checksum, length, collision...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Frame:
    kind: str  # "ack", "short", "long"
    raw: bytes

    @property
    def control(self) -> int:
        return self.raw[4] if self.kind == "long" else self.raw[1]

    @property
    def address(self) -> int:
        return self.raw[5] if self.kind == "long" else self.raw[2]

    @property
    def ci(self) -> int | None:
        return self.raw[6] if self.kind == "long" else None

    @property
    def data(self) -> bytes:
        """CI's data: what follows the CI field, up to the checksum."""
        return self.raw[7:-2] if self.kind == "long" else b""


def short_frame(control: int, address: int) -> bytes:
    return bytes([SHORT_START, control, address, (control + address) & 0xFF, STOP])


def long_frame(control: int, address: int, ci: int, data: bytes) -> bytes:
    user = bytes([control, address, ci]) + data
    if len(user) > 255:
        raise ValueError("a long frame carries at most 252 bytes of data")
    return bytes([LONG_START, len(user), len(user), LONG_START]) + user + bytes(
        [sum(user) & 0xFF, STOP])


def snd_nke(address: int) -> bytes:
    return short_frame(SND_NKE, address)


def req_ud2(address: int, fcb: bool) -> bytes:
    return short_frame(REQ_UD2 | (FCB if fcb else 0), address)


def secondary_mask(pattern: str) -> bytes:
    """`12345678` or with `F` wildcards (`1234FFFF`): the 4 BCD bytes, least significant first."""
    if len(pattern) != 8 or any(ch not in "0123456789Ff" for ch in pattern):
        raise ValueError(f"'{pattern}' is not an 8-digit identification number (F = any digit)")
    digits = pattern.upper()
    return bytes(int(digits[i:i + 2], 16) for i in range(6, -2, -2))


def select(pattern: str, manufacturer: int = 0xFFFF, version: int = 0xFF,
           medium: int = 0xFF) -> bytes:
    """SND_UD to address 253 selecting the meter(s) whose identification matches `pattern`."""
    data = secondary_mask(pattern) + manufacturer.to_bytes(2, "little") + bytes(
        [version, medium])
    return long_frame(SND_UD, SELECTED, CI_SELECT, data)


def parse_select(frame: Frame) -> tuple[str, int, int, int] | None:
    """(pattern, manufacturer, version, medium) of a select frame, or None if it is not one."""
    if frame.kind != "long" or frame.ci != CI_SELECT or len(frame.data) != 8:
        return None
    ident = "".join(f"{b:02X}" for b in reversed(frame.data[:4]))
    return (ident, int.from_bytes(frame.data[4:6], "little"), frame.data[6], frame.data[7])


def matches(pattern: str, ident: str) -> bool:
    return all(p in ("F", d) for p, d in zip(pattern.upper(), ident, strict=True))


def identification(frame: Frame) -> str | None:
    """The 8-digit identification number in a variable data response's header."""
    if frame.kind != "long" or frame.ci not in CI_RESPONSES or len(frame.data) < 4:
        return None
    return "".join(f"{b:02X}" for b in reversed(frame.data[:4]))


class FrameReader:
    """Cuts frames out of received bytes: `feed()` what arrived, then `next()` each frame.

    Bytes before a start character are noise (counted in `skipped`); a frame whose checksum,
    stop byte or length fields are wrong raises FrameError and is dropped, so a collision or a
    corrupted answer never leaves the reader stuck.
    """

    #: never hold more than this many bytes waiting for a frame to complete
    MAX_PENDING = 4096

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skipped = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > self.MAX_PENDING:
            excess = len(self.buffer) - self.MAX_PENDING
            del self.buffer[:excess]
            self.skipped += excess

    def next(self) -> Frame | None:
        buf = self.buffer
        while buf:
            start = buf[0]
            if start == ACK:
                del buf[:1]
                return Frame("ack", bytes([ACK]))
            if start == SHORT_START:
                if len(buf) < 5:
                    return None
                raw = bytes(buf[:5])
                del buf[:5]
                if raw[4] != STOP or (raw[1] + raw[2]) & 0xFF != raw[3]:
                    raise FrameError("checksum", f"bad short frame {raw.hex()}")
                return Frame("short", raw)
            if start == LONG_START:
                if len(buf) < 4:
                    return None
                length = buf[1]
                if buf[2] != length or buf[3] != LONG_START or length < 3:
                    del buf[:1]
                    raise FrameError("length", f"bad long frame header {bytes(buf[:3]).hex()}")
                if len(buf) < length + 6:
                    return None
                raw = bytes(buf[:length + 6])
                del buf[:length + 6]
                if raw[-1] != STOP or sum(raw[4:-2]) & 0xFF != raw[-2]:
                    raise FrameError("checksum", "long frame checksum or stop byte wrong")
                return Frame("long", raw)
            del buf[:1]  # noise before a frame
            self.skipped += 1
        return None
