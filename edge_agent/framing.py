"""Cuts a byte stream into lines; pure, so noise and overlong input are tested directly.

Shared by every driver of a line-oriented protocol (line instruments, NMEA 0183, IEC 62056-21).
"""

from __future__ import annotations


class LineSplitter:
    """Feeds bytes, returns complete lines without their terminator.

    A line that grows past `max_line` without a terminator is noise (or a wrong baud rate):
    it is discarded and counted in `overflows` rather than buffered without limit. With the
    terminator `\\n`, a trailing `\\r` is stripped too, so CRLF and LF devices both work.
    Empty lines are skipped.
    """

    __slots__ = ("_buffer", "_strip_cr", "max_line", "overflows", "terminator")

    def __init__(self, terminator: bytes = b"\n", max_line: int = 4096) -> None:
        if not terminator:
            raise ValueError("the terminator must not be empty")
        self.terminator, self.max_line = terminator, max_line
        self._strip_cr = terminator == b"\n"
        self._buffer = b""
        self.overflows = 0

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        if self.terminator not in buffer:  # the buffer: a CR LF may straddle two reads
            self._buffer = self._bounded(buffer)
            return []
        *lines, rest = buffer.split(self.terminator)
        self._buffer = self._bounded(rest)
        out = []
        for line in lines:
            if self._strip_cr and line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                self.overflows += 1
            elif line:
                out.append(line)
        return out

    def _bounded(self, rest: bytes) -> bytes:
        if len(rest) > self.max_line:
            self.overflows += 1
            return b""
        return rest

    def reset(self) -> None:
        self._buffer = b""
