"""Every payload that arrives from the broker is read here first, with limits.

The broker is a trust boundary (docs/security.md): anyone allowed to publish on the agent's
command topics can send any bytes. So a payload is refused *as a whole* before any of it is
used when it is larger than `MAX_PAYLOAD_BYTES`, is not UTF-8 JSON, nests deeper than
`MAX_DEPTH`, or holds a number JSON cannot carry exactly enough to act on (NaN, Infinity, a
float that overflows to infinity, an integer of more than `MAX_INTEGER_DIGITS` digits). Reading
never raises anything but `BadPayload`, whose `reason` is the label of
`edge_agent_downlink_rejected_total`.

The JSON is read by the standard library, not orjson, because orjson turns an integer beyond
64 bits into the nearest float: `-9223372036854775809` would arrive as -2**63, a value the
requester never asked for, which would then fit an int64 point.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

#: the largest command payload read at all (a `set` request, a DCMD, a STATE): a few hundred
#: bytes is usual; anything near this is not a command
MAX_PAYLOAD_BYTES = 64 * 1024
#: objects and arrays nested deeper than this are refused unread (a request has depth 1)
MAX_DEPTH = 16
#: longer integer literals are refused (no point type holds more than 20 digits)
MAX_INTEGER_DIGITS = 40
#: a request id is a string of at most this many characters, or a number (see `request_id`)
MAX_ID_CHARS = 128
#: integers beyond this are not ids: JavaScript (and every double-based JSON reader) would
#: echo them back rounded
MAX_ID_INTEGER = (1 << 53) - 1

#: the reasons a payload is refused (`edge_agent_downlink_rejected_total{reason}`)
REASONS = ("too_large", "malformed", "invalid", "retained", "unknown_device", "datatype",
           "internal")


class BadPayload(Exception):
    """A payload refused before anything was done with it; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message an output refused that has no requester to answer (STATE, NCMD): the
    downlink counts it by `reason` and logs it, once."""

    reason: str
    error: str
    fields: dict[str, Any] = field(default_factory=dict)


def _bad_constant(name: str) -> Any:
    raise BadPayload("malformed", f"the payload is not JSON ({name} is not a JSON number)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadPayload("malformed", f"the number {shown(text)} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise BadPayload("malformed", f"the number {shown(text)} has more than "
                         f"{MAX_INTEGER_DIGITS} digits")
    return int(text)


_decoder = json.JSONDecoder(parse_float=_finite_float, parse_int=_bounded_int,
                            parse_constant=_bad_constant)


def parse_json(payload: bytes) -> Any:
    """The JSON value of a payload, read within the limits above; raises `BadPayload`."""
    return _parse_limited(payload, _decoder)


def _parse_limited(payload: bytes, decoder: json.JSONDecoder) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadPayload("too_large", f"the payload is larger than {MAX_PAYLOAD_BYTES} bytes")
    if payload.count(b"[") + payload.count(b"{") > MAX_DEPTH:
        _check_depth(payload)  # only where the brackets could nest deeper than allowed
    try:
        return decoder.decode(payload.decode("utf-8"))
    except BadPayload:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise BadPayload("malformed", "the payload is not JSON") from None


DEEPER = f"the payload nests deeper than {MAX_DEPTH} levels"


def _check_depth(payload: bytes) -> None:
    """Refuses nesting beyond MAX_DEPTH; orjson reads any depth without recursing in Python
    (and refuses beyond 1024 itself), so the depth is measured on its result, iteratively."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise BadPayload("malformed", DEEPER) from None
        raise BadPayload("malformed", "the payload is not JSON") from None
    level, depth = [document], 0
    while containers := [value for value in level if isinstance(value, dict | list)]:
        depth += 1
        if depth > MAX_DEPTH:
            raise BadPayload("malformed", DEEPER)
        level = [item for value in containers
                 for item in (value.values() if isinstance(value, dict) else value)]


def request_id(body: dict[str, Any]) -> Any:
    """The request id of a JSON request, or None without one; raises `BadPayload`.

    An id is a string of at most `MAX_ID_CHARS` characters, or a finite number (an integer
    within +/-(2**53 - 1), or a float): what every JSON reader can echo back unchanged.
    """
    value = body.get("id")
    if value is None or valid_id(value):
        return value
    raise BadPayload("invalid", f'"id" must be a string of at most {MAX_ID_CHARS} characters '
                     f"or a finite number")


def valid_id(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_ID_CHARS and is_text(value)
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -MAX_ID_INTEGER <= value <= MAX_ID_INTEGER
    return isinstance(value, float) and math.isfinite(value)


def parse_set(payload: bytes) -> tuple[Any, Any]:
    """`(id, value)` of a JSON `set` request, validated whole; raises `BadPayload`.

    The value must be a JSON number, boolean or string (whether it suits the point is the
    downlink's to check); the id is checked by `request_id`.
    """
    body = parse_json(payload)
    if not isinstance(body, dict):
        raise BadPayload("invalid", 'the payload must be an object like {"value": 1, "id": "..."}')
    rid = request_id(body)
    if "value" not in body:
        raise BadPayload("invalid", 'the payload has no "value"')
    value = body["value"]
    if not isinstance(value, bool | int | float | str):
        raise BadPayload("invalid", '"value" must be a number, true/false or a string')
    if isinstance(value, str) and not is_text(value):
        raise BadPayload("invalid", '"value" is not valid Unicode text (a lone surrogate)')
    return rid, value


def is_text(value: str) -> bool:
    """False for a string JSON's `\\ud800` escapes made unencodable (a lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_id(payload: bytes) -> Any:
    """The id of a refused request, echoed only if it is a valid id (`request_id`).

    Read within the same limits, but past the numbers that made the request unreadable
    (NaN, 1e999, 400 digits: they become a marker no id can equal), so that a requester
    learns which of its requests was refused whenever its id itself is sound."""
    try:
        body = _parse_limited(payload, _lenient_decoder)
    except BadPayload:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if valid_id(value) else None


_UNREADABLE = object()  # a number the lenient reading skipped: never a valid id


def _lenient_int(text: str) -> Any:
    return int(text) if len(text.lstrip("-")) <= MAX_INTEGER_DIGITS else _UNREADABLE


def _lenient_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _UNREADABLE


_lenient_decoder = json.JSONDecoder(parse_float=_lenient_float, parse_int=_lenient_int,
                                    parse_constant=lambda name: _UNREADABLE)


#: the largest STATE timestamp taken (epoch ms, the year 2262 and beyond is a typo or an attack)
MAX_TIMESTAMP_MS = (1 << 63) - 1


def parse_state(payload: bytes) -> tuple[bool, int]:
    """`(online, timestamp)` of a Sparkplug 3.0 STATE payload; raises `BadPayload`."""
    body = parse_json(payload)
    if not isinstance(body, dict):
        raise BadPayload("invalid", "STATE must be an object with online and timestamp")
    online, ts = body.get("online"), body.get("timestamp")
    if not isinstance(online, bool):
        raise BadPayload("invalid", 'STATE "online" must be true or false')
    if isinstance(ts, float) and ts.is_integer():
        ts = int(ts)
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= MAX_TIMESTAMP_MS:
        raise BadPayload("invalid", 'STATE "timestamp" must be epoch milliseconds')
    return online, ts


def shown(value: Any, limit: int = 64) -> str:
    """`repr(value)` cut to `limit` characters, for messages and logs about hostile input."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
