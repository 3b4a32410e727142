"""Turns one line of text into readings: by regex, by delimiter and column, or as JSON.

Pure (text in, readings out), so every format is tested as a table and fuzzed directly.
A line that cannot be read as a whole (no match, too few columns, broken JSON) raises
LineError; a single field that does not convert is published as a bad reading while the rest
of the line stays good, because one garbled column says nothing about the others.

A line is device input, so nothing in it may escape as anything but LineError: a JSON document
nested 3000 deep (RecursionError) or any other parser failure is one bad line, and the other
lines of the same read are parsed as usual. Numbers are read strictly: `1_000`, ` inf`, `nan`
and `Infinity` are not numbers from an instrument, and an integer outside 64 bits (which no
JSON encoder downstream can carry) is not one either.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.sdk import BAD, GOOD, UNCERTAIN, Reading
from edge_agent_drivers.line.config import LineDevice, LineField

_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})
_RANK = {GOOD: 0, UNCERTAIN: 1, BAD: 2}
#: decimal notation as instruments print it; exponents allowed (analysers print 1.2E-05)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?\Z")
_INT = re.compile(r"[+-]?[0-9]{1,20}\Z")
INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # what the telemetry encoder carries


class LineError(ValueError):
    """The line as a whole could not be read; `kind` names why, for the fault counters."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"'{value}' is not a boolean")


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():  # also NaN and the infinities
            raise ValueError(f"{value} is not a whole number")
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INT.match(value):
        number = int(value)
    else:
        raise ValueError(f"{value!r} is not a whole number")
    if not INT_RANGE[0] <= number <= INT_RANGE[1]:
        raise ValueError("the number is outside 64 bits")
    return number


def to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, str) and not _FLOAT.match(value):
        raise ValueError(f"{value!r} is not a number")
    if not isinstance(value, int | float | str):
        raise ValueError(f"{type(value).__name__} is not a number")
    number = float(value)
    if not math.isfinite(number):  # 1e999, or NaN/Infinity that Python's json accepts
        raise ValueError(f"{value!r} is not a finite number")
    return number


def to_string(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "float": to_float, "int": to_int, "bool": to_bool, "string": to_string}


class _Field:
    __slots__ = ("convert", "map", "metric", "source")

    def __init__(self, field: LineField, source: Any) -> None:
        self.metric, self.source, self.map = field.name, source, field.map
        self.convert = _CONVERT[field.type]

    def reading(self, raw: Any) -> Reading:
        if raw is None:
            return Reading(self.metric, None, BAD)
        if isinstance(raw, str):
            raw = raw.strip()
        if self.map is not None:
            key = raw if isinstance(raw, str) else json.dumps(raw)
            if key not in self.map:
                return Reading(self.metric, None, BAD)
            raw = self.map[key]
        try:
            return Reading(self.metric, self.convert(raw), GOOD)
        except (TypeError, ValueError, OverflowError):
            return Reading(self.metric, None, BAD)


class LineParser:
    """Built once per device from its config; `parse(text)` per line."""

    def __init__(self, config: LineDevice) -> None:
        self.format = config.format
        as_source: Callable[[str | int], Any] = (
            str if config.format == "regex" else int if config.format == "delimited"
            else _json_path)
        self.fields = [_Field(f, as_source(f.where)) for f in config.fields]
        self.rules = [(as_source(q.source), frozenset(q.good), q.otherwise)
                      for q in config.quality]
        self._pattern = re.compile(config.pattern) if config.pattern else None
        self._ignore = re.compile(config.ignore) if config.ignore else None
        self._delimiter = config.delimiter
        self._columns = 1 + max(
            [s for s in (f.source for f in self.fields) if isinstance(s, int)]
            + [s for s, _, _ in self.rules if isinstance(s, int)], default=-1)

    def ignored(self, text: str) -> bool:
        return self._ignore is not None and self._ignore.search(text) is not None

    def parse(self, text: str) -> list[Reading]:
        """Readings of one line (terminator already removed). Raises LineError, only."""
        try:
            return self._parse(text)
        except LineError:
            raise
        except Exception as exc:  # device input: nothing else may escape
            raise LineError("parse", f"{type(exc).__name__}: {str(exc)[:80]}") from None

    def _parse(self, text: str) -> list[Reading]:
        values = self._extract(text)
        readings = [f.reading(values(f.source)) for f in self.fields]
        if self.rules:
            quality = self._quality(values)
            if quality != GOOD:
                readings = [r if r.quality == BAD else r._replace(quality=quality)
                            for r in readings]
        return readings

    def _quality(self, values: Callable[[Any], Any]) -> str:
        worst = GOOD
        for source, good, otherwise in self.rules:
            raw = values(source)
            shown = raw.strip() if isinstance(raw, str) else to_string(raw)
            if shown not in good and _RANK[otherwise] > _RANK[worst]:
                worst = otherwise
        return worst

    def _extract(self, text: str) -> Callable[[Any], Any]:
        if self.format == "regex":
            match = self._pattern.search(text)  # type: ignore[union-attr]  # regex needs one
            if match is None:
                raise LineError("no_match", "the line does not match the pattern")
            return match.group
        if self.format == "delimited":
            columns = text.split(self._delimiter) if self._delimiter else text.split()
            if len(columns) < self._columns:
                raise LineError("columns", f"{len(columns)} columns, {self._columns} needed")
            return columns.__getitem__
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: `[[[[...` nested too deep
            raise LineError("json", "not a JSON document (or nested too deep)") from None
        if not isinstance(document, dict):
            raise LineError("json", "not a JSON object")
        return lambda path: _lookup(document, path)


def _json_path(source: str | int) -> tuple[str, ...]:
    return tuple(str(source).split("."))


def _lookup(document: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = document
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value
