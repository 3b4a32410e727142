"""Config schema of the `line` driver."""

from __future__ import annotations

import codecs
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.sdk import PointConfig, SerialDevice, Strict


def unescape(text: str) -> str:
    r"""`\r\n` written in single quotes (or unquoted) in YAML means CR LF, as in double quotes."""
    return codecs.decode(text, "unicode_escape") if "\\" in text else text


class LineField(PointConfig):
    """One value taken from a line: where it is, how to type it, how the core scales it."""

    source: str | int | None = None  # regex group, column index or JSON key (a.b); default: name
    type: Literal["float", "int", "bool", "string"] = "float"
    map: dict[str, Any] | None = None  # text -> value before typing, e.g. {S: true, D: false}

    @field_validator("map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):  # YAML reads `1: on` with an int key; lines are text
            return {str(k): v for k, v in value.items()}
        return value

    def value_type(self) -> str | None:
        return self.type if self.type in ("bool", "string") else None  # int, float: any size

    @property
    def where(self) -> str | int:
        return self.name if self.source is None else self.source


class QualityRule(Strict):
    """The line's readings are `good` only while `source` shows one of `good`."""

    source: str | int
    good: list[str] = Field(min_length=1)
    otherwise: Literal["uncertain", "bad"] = "uncertain"

    @field_validator("good", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, list) else value


class LineDevice(SerialDevice):
    mode: Literal["stream", "poll"] = "stream"
    command: str | None = None  # poll: written every interval, e.g. "SI\r\n"
    setup: str | None = None  # written once after every connect, e.g. "SIR\r\n" (repeat)
    terminator: str = "\n"  # "\n" also accepts CR LF
    encoding: str = "ascii"
    format: Literal["regex", "delimited", "json"] = "delimited"
    pattern: str | None = None  # regex: named groups are the sources
    delimiter: str | None = ","  # delimited: null splits on runs of whitespace
    ignore: str | None = None  # regex: matching lines are skipped silently (headers, echoes)
    max_line: int = Field(4096, ge=16, le=1 << 20)
    fields: list[LineField] = Field(min_length=1)
    quality: list[QualityRule] = Field(default_factory=list)

    def point_configs(self) -> list[LineField]:
        return self.fields

    @field_validator("command", "setup", "terminator", "delimiter")
    @classmethod
    def _unescaped(cls, value: str | None) -> str | None:
        return None if value is None else unescape(value)

    @field_validator("terminator")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("the terminator must not be empty")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"'{value}' is not a known text encoding") from None
        return value

    @field_validator("pattern", "ignore")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LineDevice:
        if self.mode == "poll" and not self.command:
            raise ValueError("mode 'poll' needs a command to write every interval")
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"field names must be unique: {', '.join(duplicates)}")
        sources = [f.where for f in self.fields] + [q.source for q in self.quality]
        if self.format == "regex":
            if not self.pattern:
                raise ValueError("format 'regex' needs a pattern with named groups")
            groups = set(re.compile(self.pattern).groupindex)
            missing = sorted(str(s) for s in sources if s not in groups)
            if missing:
                raise ValueError(f"the pattern has no group named {', '.join(missing)}")
        elif self.format == "delimited":
            bad = [str(s) for s in sources if not _is_index(s)]
            if bad:
                raise ValueError(f"format 'delimited' takes column numbers (from 0) as "
                                 f"source, not {', '.join(bad)}")
        elif any(isinstance(s, int) for s in sources):
            raise ValueError("format 'json' takes key names (a.b for nesting) as source")
        return self


def _is_index(source: str | int) -> bool:
    if isinstance(source, int):
        return source >= 0
    return source.isdigit()
