"""A simulated electricity meter's optical port (IEC 62056-21 mode C) on a pseudo-terminal.

It honours the baud-rate switch the way a meter does: it answers a sign-on only when it
arrives at 300 baud, and sends the data readout at the rate of the option select, only once the
master's side of the line has switched to it (a pty carries the master's termios settings, so
the simulator reads the rate the driver set). A master that does not switch gets garbage, as
from a real meter talking at another rate.
"""

from __future__ import annotations

import asyncio
import random
import termios
import time
from collections import Counter
from typing import Any

from edge_agent_drivers.iec62056 import codec
from edge_agent_simulators.pty import Pty
from edge_agent_simulators.running import Running
from edge_agent_simulators.waves import Wave

#: termios speed constants -> baud
_SPEEDS = {getattr(termios, f"B{rate}"): rate for rate in codec.BAUD_RATES.values()}
#: how long the meter waits for the master to switch rate before talking anyway (s)
SWITCH_WAIT = 1.5


class ElectricityMeter:
    """A three-phase meter's registers: counters that rise, voltages and currents that wander."""

    def __init__(self, serial_number: str = "12345678", seed: int = 7) -> None:
        self.serial_number = serial_number
        self.start = time.monotonic()
        rng = random.Random(seed)
        self.waves = {
            "1.8.0": Wave({"counter": {"start": 12345, "rate": 1, "step": 1}}),
            "2.8.0": Wave({"counter": {"start": 123, "rate": 0.1, "step": 1}}),
            "1.7.0": Wave({"random_walk": {"start": 1.2, "step": 0.05, "min": 0, "max": 10,
                                           "seed": rng.randint(0, 999)}}),
            **{code: Wave({"random_walk": {"start": 230, "step": 0.3, "min": 215, "max": 245,
                                           "seed": rng.randint(0, 999)}})
               for code in ("32.7.0", "52.7.0", "72.7.0")},
            **{code: Wave({"random_walk": {"start": 2, "step": 0.05, "min": 0, "max": 60,
                                           "seed": rng.randint(0, 999)}})
               for code in ("31.7.0", "51.7.0", "71.7.0")},
            "14.7.0": Wave({"random_walk": {"start": 50, "step": 0.01, "min": 49.8,
                                            "max": 50.2, "seed": rng.randint(0, 999)}}),
        }

    def values(self) -> dict[str, float]:
        return {code: float(wave.value()) for code, wave in self.waves.items()}

    def lines(self) -> list[str]:
        v = self.values()
        stamp = time.gmtime()
        return [
            f"0.0.0({self.serial_number})",
            f"1.8.0({v['1.8.0'] / 1000:010.3f}*kWh)",
            f"2.8.0({v['2.8.0'] / 1000:010.3f}*kWh)",
            f"1.7.0({v['1.7.0']:06.3f}*kW)",
            *(f"{c}({v[c]:05.1f}*V)" for c in ("32.7.0", "52.7.0", "72.7.0")),
            *(f"{c}({v[c]:06.2f}*A)" for c in ("31.7.0", "51.7.0", "71.7.0")),
            f"14.7.0({v['14.7.0']:05.2f}*Hz)",
            time.strftime("0.9.1(%H:%M:%S)", stamp),
            time.strftime("0.9.2(%y-%m-%d)", stamp),
        ]


class OpticalPort:
    """The meter's side of the probe: sign-on, identification, option select, readout."""

    def __init__(self, meter: ElectricityMeter, *, manufacturer: str = "ISK",
                 ident: str = "MT174-0001", max_baudrate: int = 9600, address: str = "",
                 faults: dict[str, float] | None = None, seed: int = 5) -> None:
        self.meter, self.manufacturer, self.ident = meter, manufacturer, ident
        self.max_baudrate, self.address = max_baudrate, address
        self.faults = faults or {}
        self._rng = random.Random(seed)
        self.pty = Pty(self._received)
        self.path = self.pty.path
        self._buffer = bytearray()
        self._state = "idle"
        self._task: asyncio.Task[None] | None = None
        #: what happened, by kind: readouts, ignored (wrong rate), refused, garbled...
        self.events: Counter[str] = Counter()
        self.rates: list[int] = []  # the rate of every readout sent

    def _line_rate(self) -> int | None:
        try:
            return _SPEEDS.get(termios.tcgetattr(self.pty.master)[5])
        except termios.error:
            return None

    def _received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > 256:  # noise: a meter's input buffer is small
            del self._buffer[:-64]
        if self._state == "idle":
            end = self._buffer.find(b"!\r\n")
            start = self._buffer.rfind(b"/?", 0, end if end >= 0 else None)
            if end < 0 or start < 0:
                return
            request = bytes(self._buffer[start:end + 3])
            del self._buffer[:end + 3]
            if self._line_rate() != 300:
                self.events["ignored"] += 1  # a sign-on at the wrong rate is noise to a meter
                return
            if request != codec.sign_on(self.address) and request != codec.sign_on():
                self.events["not_addressed"] += 1
                return
            if self._fault("silence"):
                self.events["silent"] += 1
                return
            self.pty.write(codec.identification(self.manufacturer, self.max_baudrate,
                                                self.ident))
            self._state = "identified"
        elif self._state == "identified":
            ack = self._buffer.find(codec.ACK)
            if ack < 0 or len(self._buffer) < ack + 6:
                return
            frame = bytes(self._buffer[ack:ack + 6])
            del self._buffer[:ack + 6]
            rate = codec.parse_option_select(frame)
            self._state = "idle"
            if rate is None or rate > self.max_baudrate:
                self.events["refused"] += 1
                return
            self._task = asyncio.get_running_loop().create_task(self._send_readout(rate))

    async def _send_readout(self, rate: int) -> None:
        deadline = time.monotonic() + SWITCH_WAIT
        while self._line_rate() != rate and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        message = codec.readout(self.meter.lines())
        if self._line_rate() != rate:  # the master kept its old rate: it hears garbage
            self.events["garbled"] += 1
            message = bytes(b ^ 0x5A for b in message)
        elif self._fault("bad_bcc"):
            self.events["bad_bcc"] += 1
            message = message[:-1] + bytes([message[-1] ^ 0xFF])
        else:
            self.events["readouts"] += 1
            self.rates.append(rate)
        self.pty.write(message)

    def _fault(self, kind: str) -> bool:
        rate = float(self.faults.get(kind, 0.0))
        return rate > 0 and self._rng.random() < rate

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.pty.close()


async def start_iec62056(spec: Any, running: dict[str, Any]) -> Any:
    """`kind: iec62056`: keys `serial_number`, `manufacturer`, `ident`, `max_baudrate`,
    `address`, `faults` ({silence, bad_bcc}: probabilities per readout)."""
    options = dict(spec.model_extra or {})
    port = OpticalPort(ElectricityMeter(str(options.get("serial_number", "12345678"))),
                       manufacturer=str(options.get("manufacturer", "ISK")),
                       ident=str(options.get("ident", "MT174-0001")),
                       max_baudrate=int(options.get("max_baudrate", 9600)),
                       address=str(options.get("address", "")), faults=options.get("faults"))
    config = {"name": spec.name, "driver": "iec62056", "port": port.path,
              "interval": max(spec.interval, 10.0)}
    return Running(spec.name, port.path, config, port)
