"""Downlink writes: the one place a request to set points is validated, written and answered.

Every wire format maps its command topics to a `WriteRequest` (`Output.command`: the JSON
`set` topics, Sparkplug DCMD) and is handed the results to answer (`Output.answer`). The
payload itself is read by `edge_agent.inbound` (limits, JSON without NaN, ids); a message it
refuses arrives here as a request with a `problem` (answered, nothing written) or, when there
is nobody to answer (Sparkplug STATE, NCMD), as `Rejected`: both are counted by reason
(`rejected`, exported as `edge_agent_downlink_rejected_total`) and logged once.

Between the two, `Downlink` finds the device (`WriteTarget`, looked up by name) and validates
*every* write of a request with `raw_value` before the first one is performed: a point that
is not `writable`, a value of the wrong type, outside the point's `min`/`max`, or that the
point's raw type cannot hold exactly after the inverse scaling refuses the whole request.
Only then is the driver called. Every request gets exactly one answer, whatever happens in
between; every write is logged with its outcome and counted per device.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent import logs, tasks
from edge_agent.errors import DeviceError, WriteRefused
from edge_agent.inbound import Rejected, shown
from edge_agent.model import PointSpec
from edge_agent.normalize import Scaling

_INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(1 << 7), (1 << 7) - 1), "uint8": (0, (1 << 8) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
#: no point type holds an integer this large (float32's range ends near it): refused before
#: any arithmetic turns it into an OverflowError
_LARGEST = 1 << 128
#: how far an inverse-scaled value may be from a whole number and still be that number
#: (float arithmetic: 21.5 / 0.1 is 215.00000000000003); relative to the raw value
_WHOLE_TOLERANCE = 1e-9

#: the answer to a command found retained on the broker (docs/operations.md, Downlink)
RETAINED_COMMAND = ("a retained command is never executed (a write must be a live request); "
                    "clear it with an empty retained message")


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """What one downlink message asks: set these points of one device.

    `reply_to` is the output's own address for the answer (the JSON `set` topic);
    `problem` says why the message could not even be read (it is answered, nothing written),
    `reason` is its label in `edge_agent_downlink_rejected_total`.
    """

    device: str
    writes: tuple[tuple[str, Any], ...]  # (metric, engineering value)
    request_id: Any = None
    reply_to: str | None = None
    problem: str | None = None
    reason: str = "invalid"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one write. `refused`: stopped before the device (a bad request)."""

    ok: bool
    error: str | None = None
    refused: bool = False


def raw_value(spec: PointSpec, scaling: Scaling, value: Any) -> Any:
    """The raw value to hand to the driver for engineering `value`; raises WriteRefused.

    The one validation of a value to write, whichever format it came in. It never raises
    anything else, whatever `value` is, and what it returns is exactly `value` unscaled:
    a number is never rounded, wrapped or clamped into range.
    """
    try:
        return _raw_value(spec, scaling, value)
    except (OverflowError, ValueError, TypeError, ZeroDivisionError) as exc:
        raise WriteRefused(f"{shown(value)} cannot be written to '{spec.name}': "
                           f"{type(exc).__name__}") from None


def _raw_value(spec: PointSpec, scaling: Scaling, value: Any) -> Any:
    if not spec.writable:
        raise WriteRefused(f"point '{spec.name}' is not writable")
    kind = spec.value_type
    if kind == "bool" or (kind is None and isinstance(value, bool)):
        if not isinstance(value, bool):
            raise WriteRefused(f"point '{spec.name}' takes true or false, not {shown(value)}")
        return value
    if kind == "string" or (kind is None and isinstance(value, str)):
        if not isinstance(value, str):
            raise WriteRefused(f"point '{spec.name}' takes a string, not {shown(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused(f"point '{spec.name}' takes a number, not {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteRefused(f"point '{spec.name}' takes a finite number")
    if isinstance(value, int) and abs(value) > _LARGEST:
        raise WriteRefused(f"{shown(value)} is out of range for '{spec.name}'")
    if spec.minimum is not None and value < spec.minimum:
        raise WriteRefused(f"{shown(value)} is below the minimum {spec.minimum:g} of "
                           f"'{spec.name}'")
    if spec.maximum is not None and value > spec.maximum:
        raise WriteRefused(f"{shown(value)} is above the maximum {spec.maximum:g} of "
                           f"'{spec.name}'")
    raw = scaling.invert(value) if not scaling.identity else value
    if isinstance(raw, float) and not math.isfinite(raw):
        raise WriteRefused(f"{shown(value)} does not fit '{spec.name}' after scaling")
    if kind in _INTEGER_RANGES or (kind is None and isinstance(value, int)):
        whole = round(raw)
        exact = raw == whole if scaling.identity else (
            abs(raw - whole) <= _WHOLE_TOLERANCE * max(1.0, abs(raw)))
        if not exact:
            raise WriteRefused(f"{shown(value)} is not a multiple of the resolution of "
                               f"'{spec.name}' (raw {raw:g} is not a whole number)")
        low, high = _INTEGER_RANGES.get(kind or "", (-(1 << 63), (1 << 64) - 1))
        if not low <= whole <= high:
            raise WriteRefused(f"{shown(value)} does not fit '{spec.name}': raw "
                               f"{shown(whole)} is outside {kind or 'the integers'} "
                               f"({low}..{high})")
        return whole
    if kind == "float32" and abs(raw) > _FLOAT32_MAX:
        raise WriteRefused(f"{shown(value)} does not fit the float32 of '{spec.name}'")
    number = float(raw)
    if isinstance(raw, int) and not _holds_exactly(kind, raw, number):
        # a fraction is approximate to every float reader (0.1); a whole number is not
        raise WriteRefused(f"{shown(value)} cannot be written exactly to the "
                           f"{kind or 'float'} '{spec.name}'")
    return number


def _holds_exactly(kind: str | None, whole: int, number: float) -> bool:
    if number != whole:
        return False
    return kind != "float32" or struct.unpack("<f", struct.pack("<f", number))[0] == number


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

    def command(self, topic: str, payload: bytes,
                retained: bool) -> WriteRequest | Rejected | None: ...

    def answer(self, request: WriteRequest, results: Sequence[WriteResult]) -> None: ...


def validate(target: WriteTarget, metric: str, value: Any) -> Any:
    """The raw value of one write to `target`; raises WriteRefused (nothing reaches it)."""
    spec = target.points.get(metric)
    if spec is None:
        raise WriteRefused(f"device '{target.name}' has no point {shown(metric)}")
    return raw_value(spec, target.scaling(metric), value)


async def _perform(target: WriteTarget, log: Any, metric: str, raw: Any) -> WriteResult:
    """Hands one validated raw value to the driver, with the outcome logged and counted."""
    if target.status != "connected":
        target.writes["failed"] += 1
        error = f"device '{target.name}' is not connected"
        log.warning("write_failed", raw=raw, error=error)
        return WriteResult(False, error)
    try:
        await target.write_raw(metric, raw)
    except WriteRefused as exc:  # the driver knows limits the core does not (read-only table)
        target.writes["refused"] += 1
        log.warning("write_refused", raw=shown(raw), error=str(exc))
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
    `rejected` counts messages refused before any device saw them, by reason; it may be
    shared with a later Downlink (an output restarted by a reload) so the counts carry on.
    """

    def __init__(self, channel: CommandChannel,
                 lookup: Callable[[str], WriteTarget | None],
                 rejected: Counter[str] | None = None) -> None:
        self.channel, self.lookup = channel, lookup
        self.rejected: Counter[str] = rejected if rejected is not None else Counter()
        self.log = logs.get("edge_agent.downlink")
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """Called by the transport on the event loop for every subscribed message; never
        raises (a bad message must not end the transport's callback)."""
        try:
            outcome = self.channel.command(topic, payload, retained)
        except Exception as exc:  # an output's bug: counted, logged, the next message read
            self._reject(Rejected("internal", f"internal error: {exc!r}", {"topic": topic}))
            return
        if outcome is None:
            return
        if isinstance(outcome, Rejected):
            self._reject(outcome)
            return
        task = tasks.spawn(self._serve(outcome), "downlink", self.log)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reject(self, rejected: Rejected) -> None:
        self.rejected[rejected.reason] += 1
        self.log.warning("downlink_rejected", reason=rejected.reason, error=rejected.error,
                         **rejected.fields)

    async def _serve(self, request: WriteRequest) -> None:
        """Exactly one answer per request, even if validating or writing hit a bug."""
        try:
            results = await self.handle(request)
        except Exception as exc:
            self.rejected["internal"] += 1
            self.log.error("downlink_internal_error", device=request.device,
                           request_id=request.request_id, error=repr(exc))
            results = [WriteResult(False, "internal error")] * max(1, len(request.writes))
        try:
            self.channel.answer(request, results)
        except Exception as exc:
            self.rejected["internal"] += 1
            self.log.error("downlink_answer_failed", device=request.device,
                           request_id=shown(request.request_id), error=repr(exc))

    async def handle(self, request: WriteRequest) -> list[WriteResult]:
        """Validates the whole request, then performs it: one result per write it asks for."""
        count = max(1, len(request.writes))
        problem, reason = request.problem, request.reason
        if problem is None and not request.writes:
            problem = "the request asks for no write"
        target = None
        if problem is None:
            target = self.lookup(request.device)
            if target is None:
                problem = f"no device {shown(request.device)} on this node"
                reason = "unknown_device"
        if target is None:
            self.rejected[reason] += 1
            self.log.warning("downlink_rejected", reason=reason, device=request.device,
                             metrics=[m for m, _ in request.writes],
                             request_id=request.request_id, error=problem)
            return [WriteResult(False, problem, refused=True)] * count
        raws: list[Any] = []
        refusal: WriteRefused | None = None
        for metric, value in request.writes:
            try:
                raws.append(validate(target, metric, value))
            except WriteRefused as exc:
                refusal = exc
                target.writes["refused"] += 1
                target.log.warning("write_refused", metric=metric, value=shown(value),
                                   request_id=request.request_id, error=str(exc))
                break
        if refusal is not None:
            # validated whole: one bad write and none of the request reaches the device
            error = str(refusal)
            return [WriteResult(False, error, refused=True)] * len(request.writes)
        results = []
        for (metric, value), raw in zip(request.writes, raws, strict=True):
            log = target.log.bind(metric=metric, value=shown(value),
                                  request_id=request.request_id)
            results.append(await _perform(target, log, metric, raw))
        return results

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
