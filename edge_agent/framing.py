"""Cuts a byte stream into lines; pure, so noise and overlong input are tested directly.

Shared by every driver of a line-oriented protocol (line instruments, NMEA 0183, IEC 62056-21).
"""

from __future__ import annotations


class LineSplitter:
    """Feeds bytes, returns complete lines without their terminator.

    Memory is bounded by `max_line` whatever the device sends: a line that grows past it
    without a terminator is noise (or a wrong baud rate, or a device that never sends a line
    end): it is discarded and counted once in `overflows`, and the rest of it, up to the next
    terminator, is discarded too, so its tail is never parsed as a line of its own. With the
    terminator `\\n`, a trailing `\\r` is stripped too, so CRLF and LF devices both work.
    Empty lines are skipped.
    """

    __slots__ = ("_buffer", "_skipping", "_strip_cr", "max_line", "overflows", "terminator")

    def __init__(self, terminator: bytes = b"\n", max_line: int = 4096) -> None:
        if not terminator:
            raise ValueError("the terminator must not be empty")
        self.terminator, self.max_line = terminator, max_line
        self._strip_cr = terminator == b"\n"
        self._buffer = b""
        self._skipping = False  # inside an overlong line: dropping up to its terminator
        self.overflows = 0

    def feed(self, data: bytes) -> list[bytes]:
        terminator = self.terminator
        buffer = self._buffer + data if self._buffer else data
        if self._skipping:
            end = buffer.find(terminator)
            if end < 0:
                self._buffer = self._terminator_start(buffer)
                return []
            buffer = buffer[end + len(terminator):]
            self._skipping = False
        if terminator not in buffer:  # the buffer: a CR LF may straddle two reads
            self._buffer = self._bounded(buffer)
            return []
        *lines, rest = buffer.split(terminator)
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
            self._skipping = True
            return self._terminator_start(rest)
        return rest

    def _terminator_start(self, skipped: bytes) -> bytes:
        """What must stay of skipped bytes: the start of a terminator split across reads."""
        keep = len(self.terminator) - 1
        return skipped[-keep:] if keep else b""

    def reset(self) -> None:
        self._buffer = b""
        self._skipping = False
