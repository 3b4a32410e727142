"""Downlink writes: the one place a request to set points is validated, written and answered.

Every wire format maps its command topics to a `WriteRequest` (`Output.command`: the JSON
`set` topics, Sparkplug DCMD) and is handed the results to answer (`Output.answer`); in
between, `Downlink` finds the device (`WriteTarget`, looked up by name) and `write_point`
refuses, before anything reaches the device, a point that is not marked `writable`, a value
of the wrong type, one outside the point's `min`/`max`, and one the point's raw type cannot
hold after the inverse scaling; only then does it call the driver. Every write is logged with
its outcome and counted per device.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent import logs
from edge_agent.errors import DeviceError, WriteRefused
from edge_agent.model import PointSpec
from edge_agent.normalize import Scaling

_INTEGER_RANGES: dict[str, tuple[float, float]] = {
    "int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """What one downlink message asks: set these points of one device.

    `reply_to` is the output's own address for the answer (the JSON `set` topic);
    `problem` says why the message could not even be read (it is answered, nothing written).
    """

    device: str
    writes: tuple[tuple[str, Any], ...]  # (metric, engineering value)
    request_id: Any = None
    reply_to: str | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one write. `refused`: stopped before the device (a bad request)."""

    ok: bool
    error: str | None = None
    refused: bool = False


def raw_value(spec: PointSpec, scaling: Scaling, value: Any) -> Any:
    """The raw value to hand to the driver for engineering `value`; raises WriteRefused."""
    if not spec.writable:
        raise WriteRefused(f"point '{spec.name}' is not writable")
    kind = spec.value_type
    if kind == "bool" or (kind is None and isinstance(value, bool)):
        if not isinstance(value, bool):
            raise WriteRefused(f"point '{spec.name}' takes true or false, not {value!r}")
        return value
    if kind == "string" or (kind is None and isinstance(value, str)):
        if not isinstance(value, str):
            raise WriteRefused(f"point '{spec.name}' takes a string, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused(f"point '{spec.name}' takes a number, not {value!r}")
    if not math.isfinite(value):
        raise WriteRefused(f"point '{spec.name}' takes a finite number")
    if spec.minimum is not None and value < spec.minimum:
        raise WriteRefused(f"{value} is below the minimum {spec.minimum:g} of '{spec.name}'")
    if spec.maximum is not None and value > spec.maximum:
        raise WriteRefused(f"{value} is above the maximum {spec.maximum:g} of '{spec.name}'")
    raw = scaling.invert(value) if not scaling.identity else value
    if kind in _INTEGER_RANGES or (kind is None and isinstance(value, int)):
        whole = round(raw)
        if abs(raw - whole) > 1e-6 * max(1.0, abs(raw)):
            raise WriteRefused(f"{value} is not a multiple of the resolution of '{spec.name}' "
                               f"(raw {raw:g} is not a whole number)")
        low, high = _INTEGER_RANGES.get(kind or "", (-math.inf, math.inf))
        if not low <= whole <= high:
            raise WriteRefused(f"{value} does not fit '{spec.name}': raw {whole} is outside "
                               f"{kind} ({low}..{high})")
        return whole
    if kind == "float32" and abs(raw) > _FLOAT32_MAX:
        raise WriteRefused(f"{value} does not fit the float32 of '{spec.name}'")
    return float(raw)


class WriteTarget(Protocol):
    """What a write needs of a device (a supervised device runner provides it)."""

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def points(self) -> Mapping[str, PointSpec]: ...

    #: writes by result ("ok", "refused", "failed"), for /metrics
    writes: Counter[str]
    log: Any  # the device's bound structlog logger

    def scaling(self, metric: str) -> Scaling: ...

    async def write_raw(self, metric: str, raw: Any) -> None:
        """Hands a validated raw value to the driver (with the device's time limit)."""
        ...


class CommandChannel(Protocol):
    """The part of an output that speaks downlink (see `edge_agent.outputs.base.Output`)."""

    def command(self, topic: str, payload: bytes, retained: bool) -> WriteRequest | None: ...

    def answer(self, request: WriteRequest, results: Sequence[WriteResult]) -> None: ...


async def write_point(target: WriteTarget, metric: str, value: Any,
                      request_id: Any = None) -> WriteResult:
    """Validates, unscales and writes one value; never raises for a bad request."""
    log = target.log.bind(metric=metric, value=value, request_id=request_id)
    spec = target.points.get(metric)
    try:
        if spec is None:
            raise WriteRefused(f"device '{target.name}' has no point '{metric}'")
        raw = raw_value(spec, target.scaling(metric), value)
    except WriteRefused as exc:
        target.writes["refused"] += 1
        log.warning("write_refused", error=str(exc))
        return WriteResult(False, str(exc), refused=True)
    if target.status != "connected":
        target.writes["failed"] += 1
        error = f"device '{target.name}' is not connected"
        log.warning("write_failed", raw=raw, error=error)
        return WriteResult(False, error)
    try:
        await target.write_raw(metric, raw)
    except WriteRefused as exc:  # the driver knows limits the core does not (read-only table)
        target.writes["refused"] += 1
        log.warning("write_refused", raw=raw, error=str(exc))
        return WriteResult(False, str(exc), refused=True)
    except (DeviceError, TimeoutError, OSError, NotImplementedError) as exc:
        target.writes["failed"] += 1
        error = str(exc) or type(exc).__name__
        log.warning("write_failed", raw=raw, error=error)
        return WriteResult(False, error)
    target.writes["ok"] += 1
    log.info("write_done", raw=raw)
    return WriteResult(True)


class Downlink:
    """Turns an output's command messages into writes and answers every request.

    `lookup` finds the device a request names (None: no such device on this node). One
    request's writes run in order; requests run concurrently, as tasks cancelled by `close`.
    """

    def __init__(self, channel: CommandChannel,
                 lookup: Callable[[str], WriteTarget | None]) -> None:
        self.channel, self.lookup = channel, lookup
        self.log = logs.get("edge_agent.downlink")
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """Called by the transport on the event loop for every subscribed message."""
        request = self.channel.command(topic, payload, retained)
        if request is None:
            return
        task = asyncio.get_running_loop().create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: WriteRequest) -> None:
        self.channel.answer(request, await self.handle(request))

    async def handle(self, request: WriteRequest) -> list[WriteResult]:
        """Validates and performs a request: one result per write it asks for."""
        problem = request.problem
        target = None
        if problem is None:
            target = self.lookup(request.device)
            if target is None:
                problem = f"no device '{request.device}' on this node"
        if target is None:
            for metric, _ in request.writes or (("", None),):
                self.log.warning("write_refused", device=request.device, metric=metric,
                                 request_id=request.request_id, error=problem)
            return [WriteResult(False, problem, refused=True)] * max(1, len(request.writes))
        return [await write_point(target, metric, value, request.request_id)
                for metric, value in request.writes]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
