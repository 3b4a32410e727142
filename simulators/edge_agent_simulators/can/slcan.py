"""A USB-CAN adapter speaking the slcan (Lawicel) ASCII protocol on a pseudo-terminal.

The host side (python-can's `slcan` interface) opens the pty exactly as it opens a real
adapter's tty: it sets the bitrate (`S6`), opens the channel (`O`) and reads frames as lines
(`t1008...` standard, `T18FEF1008...` extended). The adapter answers commands with CR (or BEL
for an error), and while open sends the frames of its DBC messages, encoded with cantools, at
each message's period. Faults: `noise` (a garbage line instead of a frame, some not ASCII) and
`bad_length` (a frame shorter than its DBC message), probabilities per frame.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from importlib.resources import files
from typing import Any

import cantools

from edge_agent_simulators.line import PtyPort
from edge_agent_simulators.running import Running

#: the DBC of the built-in adapter's traffic
DEFAULT_DBC = str(files("edge_agent_simulators.can").joinpath("engine.dbc"))
_BITRATE_CODES = {"S0": 10_000, "S1": 20_000, "S2": 50_000, "S3": 100_000, "S4": 125_000,
                  "S5": 250_000, "S6": 500_000, "S7": 750_000, "S8": 1_000_000}


def frame_line(frame_id: int, data: bytes, extended: bool) -> bytes:
    head = f"T{frame_id:08X}" if extended else f"t{frame_id:03X}"
    return f"{head}{len(data)}{data.hex().upper()}\r".encode("ascii")


class SlcanAdapter:
    """The adapter's state: open or closed, its bitrate, and the traffic it relays."""

    def __init__(self, dbc: str = DEFAULT_DBC, *, period: float = 0.05,
                 faults: dict[str, float] | None = None, seed: int = 9) -> None:
        self.db = cantools.database.load_file(dbc)
        self.period = period
        self.faults = faults or {}
        self._rng = random.Random(seed)
        self.start = time.monotonic()
        self.port = PtyPort(self._command)
        self.path = self.port.path
        self.open = False
        self.bitrate: int | None = None
        #: what it did: commands by letter, frames sent, faults injected
        self.counts: Counter[str] = Counter()
        self.sent: list[tuple[int, dict[str, float]]] = []
        self.port.every(period, self._tick)

    def _command(self, line: bytes) -> None:
        text = line.decode("ascii", "replace").strip()
        self.counts[text[:1] or "?"] += 1
        if text in _BITRATE_CODES and not self.open:
            self.bitrate = _BITRATE_CODES[text]
            self.port.write(b"\r")
        elif text in ("O", "L"):
            self.open = True
            self.port.write(b"\r")
        elif text == "C":
            self.open = False
            self.port.write(b"\r")
        elif text == "V":
            self.port.write(b"V1013\r")
        elif text == "N":
            self.port.write(b"NA123\r")
        elif text[:1] in ("t", "T"):
            self.port.write(b"z\r" if text[0] == "t" else b"Z\r")
        else:
            self.port.write(b"\a")

    def values(self, message: Any) -> dict[str, float]:
        """Every signal of `message` at its mid-range, moving slowly and within its limits."""
        elapsed = time.monotonic() - self.start
        out = {}
        for i, signal in enumerate(message.signals):
            low = signal.minimum if signal.minimum is not None else 0
            high = signal.maximum if signal.maximum is not None else 100
            mid, span = (low + high) / 2, (high - low) / 4
            out[signal.name] = mid + span * math.sin(elapsed / 5 + i)
        return out

    def _tick(self) -> None:
        if not self.open:
            return
        for message in self.db.messages:
            if self._fault("noise"):
                self.counts["noise"] += 1
                self.port.write(self._rng.choice([b"t12Z8XYZ\r", b"\xff\xfe\x80garbage\r",
                                                  b"T1\r", b"t1008GGGGGGGGGGGGGGGG\r"]))
                continue
            values = self.values(message)
            data = message.encode(values, strict=False)
            if self._fault("bad_length"):
                self.counts["bad_length"] += 1
                data = data[:1]
            else:
                self.sent.append((message.frame_id, values))
                del self.sent[:-1000]
            self.port.write(frame_line(message.frame_id, data, message.is_extended_frame))
            self.counts["frames"] += 1

    def _fault(self, kind: str) -> bool:
        rate = float(self.faults.get(kind, 0.0))
        return rate > 0 and self._rng.random() < rate

    def close(self) -> None:
        self.port.close()


async def start_slcan(spec: Any, running: dict[str, Any]) -> Any:
    """`kind: slcan`: keys `dbc` (default: a small engine DBC), `period` (s between each
    message's frames), `faults` ({noise, bad_length}: probabilities per frame)."""
    await asyncio.sleep(0)
    options = dict(spec.model_extra or {})
    adapter = SlcanAdapter(str(options.get("dbc", DEFAULT_DBC)),
                           period=float(options.get("period", 0.1)),
                           faults=options.get("faults"))
    config = {"name": spec.name, "driver": "can", "interface": "slcan",
              "channel": adapter.path, "bitrate": 500_000, "dbc": str(options.get(
                  "dbc", DEFAULT_DBC)), "open_delay": 0, "throttle": 1.0}
    return Running(spec.name, adapter.path, config, adapter)
