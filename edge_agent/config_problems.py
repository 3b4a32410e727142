"""Pydantic's validation errors as the lines a user reads: the field's path as they would write
it (`devices[2].points[0].type`), then what is wrong. Apart from config.py so that every module
that validates part of a config (profiles, the fleet loader) words its problems the same way
without importing the whole config module."""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import ErrorDetails


def format_problems(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, led by the field's path as a user would write it."""
    lines = []
    for item in error.errors():
        path = prefix
        for part in item["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in ("function-after", "function-before") or "[" in str(part):
                continue  # pydantic's internal validator labels, not user-visible fields
            else:
                path += f".{part}" if path else str(part)
        lines.append(f"{path or '<root>'}: {_describe(item)}")
    return lines


def _describe(item: ErrorDetails) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind == "literal_error":
        expected = ctx.get("expected", "").replace("'", "").replace(" or ", ", ")
        return f"{item['input']!r} is not one of {expected}"
    if kind == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if kind == "missing":
        return "is required"
    message = item["msg"].removeprefix("Value error, ")
    return message
