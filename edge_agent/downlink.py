"""Downlink writes: setting a point of a device from MQTT.

`write_point` is the one write path, whatever the wire format: the JSON `set` topics here and
Sparkplug DCMD both go through it. It refuses, before anything reaches the device, a point
that is not marked `writable`, a value of the wrong type, one outside the point's `min`/`max`,
and one the point's raw type cannot hold after the inverse scaling; only then does it call
the driver. Every write is logged with its outcome and counted per device.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent import logs
from edge_agent.errors import DeviceError, WriteRefused
from edge_agent.model import PointSpec
from edge_agent.topics import dumps

if TYPE_CHECKING:
    from edge_agent.runtime import Agent, DeviceRunner

_INTEGER_RANGES = {
    "int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one write. `refused`: stopped before the device (a bad request)."""

    ok: bool
    error: str | None = None
    refused: bool = False


def raw_value(spec: PointSpec, scaling: Any, value: Any) -> Any:
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
        low, high = _INTEGER_RANGES.get(kind, (-math.inf, math.inf))
        if not low <= whole <= high:
            raise WriteRefused(f"{value} does not fit '{spec.name}': raw {whole} is outside "
                               f"{kind} ({low}..{high})")
        return whole
    if kind == "float32" and abs(raw) > _FLOAT32_MAX:
        raise WriteRefused(f"{value} does not fit the float32 of '{spec.name}'")
    return float(raw)


async def write_point(runner: DeviceRunner, metric: str, value: Any,
                      request_id: Any = None) -> WriteResult:
    """Validates, unscales and writes one value; never raises for a bad request."""
    log = runner.log.bind(metric=metric, value=value, request_id=request_id)
    spec = runner.points.get(metric)
    try:
        if spec is None:
            raise WriteRefused(f"device '{runner.config.name}' has no point '{metric}'")
        raw = raw_value(spec, runner.normalizer.scaling(metric), value)
    except WriteRefused as exc:
        runner.writes["refused"] += 1
        log.warning("write_refused", error=str(exc))
        return WriteResult(False, str(exc), refused=True)
    driver = runner.driver
    if driver is None or runner.state.state != "connected":
        runner.writes["failed"] += 1
        error = f"device '{runner.config.name}' is not connected"
        log.warning("write_failed", raw=raw, error=error)
        return WriteResult(False, error)
    try:
        await asyncio.wait_for(driver.write(metric, raw), runner.config.timeout * 3)
    except WriteRefused as exc:  # the driver knows limits the core does not (read-only table)
        runner.writes["refused"] += 1
        log.warning("write_refused", raw=raw, error=str(exc))
        return WriteResult(False, str(exc), refused=True)
    except (DeviceError, TimeoutError, OSError, NotImplementedError) as exc:
        runner.writes["failed"] += 1
        error = str(exc) or type(exc).__name__
        log.warning("write_failed", raw=raw, error=error)
        return WriteResult(False, error)
    runner.writes["ok"] += 1
    log.info("write_done", raw=raw)
    return WriteResult(True)


class JsonDownlink:
    """`<p>/<node>/<device>/set/<metric>` with `{"value": ..., "id": ...}`; answers on
    `.../set/<metric>/result` with `{"id": ..., "ok": ..., "error": ...}`, always."""

    def __init__(self, agent: Agent, publish: Callable[[str, bytes], None]) -> None:
        self.agent = agent
        self.publish = publish
        self.log = logs.get("edge_agent.downlink")
        self._base = f"{agent.topics.prefix}/{agent.topics.node}/"
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self._base):
            return
        parts = topic[len(self._base):].split("/")
        if len(parts) != 3 or parts[1] != "set":
            return
        task = asyncio.get_running_loop().create_task(
            self._handle(topic, parts[0], parts[2], payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, topic: str, device: str, metric: str, payload: bytes) -> None:
        request_id, value, problem = _parse(payload)
        if problem is None:
            runner = self.agent.runners.get(device)
            if runner is None:
                problem = f"no device '{device}' on this node"
            else:
                result = await write_point(runner, metric, value, request_id)
                self._answer(topic, request_id, result.ok, result.error)
                return
        self.log.warning("write_refused", device=device, metric=metric, request_id=request_id,
                         error=problem)
        self._answer(topic, request_id, False, problem)

    def _answer(self, topic: str, request_id: Any, ok: bool, error: str | None) -> None:
        body: dict[str, Any] = {"id": request_id, "ok": ok}
        if error is not None:
            body["error"] = error
        self.publish(f"{topic}/result", dumps(body))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _parse(payload: bytes) -> tuple[Any, Any, str | None]:
    """(id, value, problem) from a set payload."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None, None, "the payload is not JSON"
    if not isinstance(body, dict):
        return None, None, 'the payload must be an object like {"value": 1, "id": "..."}'
    request_id = body.get("id")
    if "value" not in body:
        return request_id, None, 'the payload has no "value"'
    return request_id, body["value"], None
