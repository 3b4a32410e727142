"""The `can` driver: frames from a python-can bus, signals decoded with a DBC file (cantools).

python-can's buses block in `recv()`, so one reader thread per device receives frames and hands
them to the event loop through a bounded queue: a bus flooding frames fills the queue and the
excess is dropped and counted (`overflow`), never memory. The device streams: one sample per
decoded frame (optionally throttled per message id).

Faults are counted by kind in the device's errors (`/metrics`): `error_frame` and `bus_off`
from error frames, `garbage` for adapter output python-can cannot parse, `decode` for a frame
whose payload does not fit its DBC message, `range` for a signal outside the DBC's
minimum..maximum (published as bad). A bus that fails (adapter unplugged, interface
down) ends the stream as a disconnect, and the core reopens it with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import can

from edge_agent.sdk import (
    BAD,
    GOOD,
    DeviceDisconnected,
    Driver,
    FaultTally,
    PointSpec,
    Reading,
    Sample,
    get_logger,
    resolve_port,
)
from edge_agent_drivers.can.config import SERIAL_INTERFACES, CanDevice
from edge_agent_drivers.can.units import ucum

#: SocketCAN error class bit for bus-off (linux/can/error.h CAN_ERR_BUSOFF)
CAN_ERR_BUSOFF = 0x40
#: how long one recv() waits, so the reader thread notices a stop request
RECV_TIMEOUT = 0.2


class CanDriver(Driver):
    config_model = CanDevice
    streaming = True

    def __init__(self, config: CanDevice) -> None:
        super().__init__(config)
        self.config: CanDevice = config
        self.log = get_logger("edge_agent.driver.can", device=config.name)
        self.errors: FaultTally = FaultTally(self.log, "can_fault")
        db = config.database
        wanted = set(config.messages or ())
        self._messages = {m.frame_id: m for m in db.messages
                          if not wanted or m.name in wanted or m.frame_id in wanted}
        self._names = self._metric_names()
        #: frame id -> signal -> (minimum, maximum) as the DBC declares them
        self._limits = {fid: {s.name: (s.minimum, s.maximum) for s in m.signals}
                        for fid, m in self._messages.items()}
        self._bus: Any = None
        self._queue: asyncio.Queue[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[int, float] = {}

    # -- the metrics -----------------------------------------------------------------------
    def _metric_names(self) -> dict[tuple[str, str], tuple[str, str | None]]:
        """(message, signal) -> (metric, unit) for every signal this device publishes."""
        counts: dict[str, int] = {}
        for message in self._messages.values():
            for signal in message.signals:
                counts[signal.name] = counts.get(signal.name, 0) + 1
        names: dict[tuple[str, str], tuple[str, str | None]] = {}
        if self.config.all_signals:
            for message in self._messages.values():
                for signal in message.signals:
                    metric = (signal.name if counts[signal.name] == 1
                              else f"{message.name}.{signal.name}")
                    names[(message.name, signal.name)] = (metric, ucum(signal.unit))
        for point in self.config.points:
            for message in self._messages.values():
                if point.message not in (None, message.name):
                    continue
                for signal in message.signals:
                    if signal.name == point.signal:
                        names[(message.name, signal.name)] = (point.name,
                                                              point.unit or ucum(signal.unit))
        return names

    def points(self) -> list[PointSpec]:
        configured = {p.name: p for p in self.config.points}
        specs = {}
        for metric, unit in self._names.values():
            point = configured.get(metric)
            specs[metric] = (PointSpec(metric, unit, point.scale, point.offset)
                             if point is not None else PointSpec(metric, unit))
        return list(specs.values())

    # -- the bus -------------------------------------------------------------------------
    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._bus = await loop.run_in_executor(None, self._open)
        self._queue = asyncio.Queue(self.config.queue)
        self._stop.clear()
        self._thread = threading.Thread(target=self._receive, args=(loop, self._bus,
                                        self._queue), daemon=True,
                                        name=f"can-{self.config.name}")
        self._thread.start()

    def _open(self) -> Any:
        config = self.config
        channel = config.channel
        options = dict(config.options)
        if config.interface in SERIAL_INTERFACES:
            channel = resolve_port(channel)
            if config.interface == "slcan":
                options.setdefault("sleep_after_open", config.open_delay)
        filters = [{"can_id": m.frame_id, "can_mask": 0x1FFFFFFF if m.is_extended_frame
                    else 0x7FF, "extended": m.is_extended_frame}
                   for m in self._messages.values()] if self.config.messages else None
        try:
            return can.Bus(interface=config.interface, channel=channel,
                           bitrate=config.bitrate, can_filters=filters, **options)
        except (can.CanError, OSError, ValueError, ImportError) as exc:
            raise DeviceDisconnected(f"cannot open {config.interface} {channel}: "
                                     f"{exc}") from None

    def _receive(self, loop: asyncio.AbstractEventLoop, bus: Any,
                 queue: asyncio.Queue[Any]) -> None:
        """The reader thread: frames (and the failure that ends them) to the event loop."""
        while not self._stop.is_set():
            try:
                message = bus.recv(RECV_TIMEOUT)
            except (can.CanError, OSError) as exc:
                if not isinstance(exc.__cause__, UnicodeDecodeError):
                    if not self._stop.is_set():  # the adapter or interface is gone
                        loop.call_soon_threadsafe(self._offer, queue, DeviceDisconnected(
                            f"{self.config.interface} {self.config.channel}: {exc}"))
                    return
                # non-ASCII noise from a serial adapter: python-can keeps the bytes it
                # could not decode buffered, so they are flushed
                loop.call_soon_threadsafe(self.errors.record, "garbage", "not ASCII")
                with contextlib.suppress(Exception):
                    bus.flush()
                continue
            except Exception as exc:  # python-can's frame parser choked on one line
                loop.call_soon_threadsafe(self.errors.record, "garbage",
                                          f"{type(exc).__name__}: {exc}")
                continue
            if message is not None:
                loop.call_soon_threadsafe(self._offer, queue, message)

    def _offer(self, queue: asyncio.Queue[Any], item: Any) -> None:
        if isinstance(item, Exception):  # a failure always gets through
            while queue.full():
                queue.get_nowait()
                self.errors.record("overflow", "frames dropped behind a failure")
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            self.errors.record("overflow", f"more than {self.config.queue} frames waiting")

    async def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        bus, self._bus = self._bus, None
        loop = asyncio.get_running_loop()
        if thread is not None:
            await loop.run_in_executor(None, thread.join, 2 * RECV_TIMEOUT + 1)
        if bus is not None:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, bus.shutdown)

    # -- frames to readings --------------------------------------------------------------
    async def stream(self) -> AsyncIterator[Sample]:
        queue = self._queue
        if queue is None:
            raise DeviceDisconnected("not connected")
        while True:
            item = await queue.get()
            if isinstance(item, Exception):
                raise item
            sample = self._decode(item)
            if sample is not None:
                yield sample

    def _decode(self, frame: Any) -> Sample | None:
        if frame.is_error_frame:
            busoff = frame.arbitration_id & CAN_ERR_BUSOFF
            self.errors.record("bus_off" if busoff else "error_frame",
                               f"error frame {frame.arbitration_id:#x}")
            return None
        message = self._messages.get(frame.arbitration_id)
        if message is None or frame.is_remote_frame:
            return None  # another node's frame on a shared bus: not this device's
        ts = int(frame.timestamp * 1000)
        throttle = self.config.throttle
        if throttle:
            last = self._last.get(frame.arbitration_id)
            if last is not None and frame.timestamp - last < throttle:
                return None
            self._last[frame.arbitration_id] = frame.timestamp
        try:
            values = message.decode(bytes(frame.data), decode_choices=False, scaling=True)
        except Exception as exc:  # cantools: too short, bad multiplexer, ...
            self.errors.record("decode", f"{message.name}: {exc}", bytes(frame.data).hex())
            return None
        readings = []
        names, limits = self._names, self._limits[message.frame_id]
        for signal, value in values.items():
            named = names.get((message.name, signal))
            if named is None:
                continue
            low, high = limits.get(signal, (None, None))
            if (low is not None and value < low) or (high is not None and value > high):
                self.errors.record("range", f"{message.name}.{signal} = {value} outside "
                                            f"[{low}, {high}]")
                readings.append(Reading(named[0], value, BAD))
            else:
                readings.append(Reading(named[0], value, GOOD))
        return Sample(ts, readings) if readings else None
