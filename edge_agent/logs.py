"""Structured JSON logs on stdout, one object per line, carrying node and device.

Everything the process logs goes through structlog, including what libraries send to the
standard `logging` module (asyncio's "Fatal error: protocol.data_received() call failed"
when a Modbus server sends garbage, pymodbus, paho), Python warnings, and exceptions that
end a thread or the process: each becomes one JSON event with the exception's type, message
and last frames as fields. No raw traceback reaches stdout or stderr, where a log collector
would split it into dozens of unparseable lines.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
#: frames of a library's traceback kept in a log event: where it failed, not the whole stack
FRAMES = 5


def configure(level: str = "info", node: str | None = None) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    if node:
        structlog.contextvars.bind_contextvars(node=node)
    route_library_logs()


def route_library_logs() -> None:
    """Sends the standard logging module's records, warnings and uncaught exceptions to
    structlog. Libraries' noise is kept at warning and above (pymodbus: critical only, its
    errors on a lost connection are what the driver reports itself)."""
    root = logging.getLogger()
    if not any(isinstance(h, StructlogHandler) for h in root.handlers):
        root.addHandler(StructlogHandler())
    root.setLevel(logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.captureWarnings(True)
    logging.raiseExceptions = False  # a failing handler must not print its own traceback
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


class StructlogHandler(logging.Handler):
    """A logging handler that re-emits each record as a structlog event."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name,
                                      "message": record.getMessage()[:2000]}
            if record.exc_info and record.exc_info[1] is not None:
                fields.update(exception_fields(record.exc_info[1], record.exc_info[2]))
            structlog.get_logger(record.name).log(_standard_level(record.levelno),
                                                  "library_log", **fields)
        except Exception:  # a log line must never raise into the code that logged it
            self.handleError(record)


def _standard_level(levelno: int) -> int:
    """A library's own level (e.g. 25) as the standard level just below it."""
    return max((level for level in _LEVELS.values() if level <= levelno),
               default=logging.DEBUG) if levelno < logging.CRITICAL else logging.CRITICAL


def exception_fields(exc: BaseException, tb: TracebackType | None) -> dict[str, Any]:
    """An exception as log fields: its type and message, and its last frames."""
    frames = traceback.extract_tb(tb)[-FRAMES:] if tb is not None else []
    return {"error": f"{type(exc).__name__}: {str(exc)[:500]}",
            "frames": [f"{f.filename}:{f.lineno} in {f.name}" for f in frames]}


def _log_uncaught(kind: type[BaseException], exc: BaseException,
                  tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        return
    structlog.get_logger("edge_agent").critical("uncaught_exception",
                                                **exception_fields(exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    structlog.get_logger("edge_agent").error(
        "thread_crashed", thread=args.thread.name if args.thread else None,
        **exception_fields(args.exc_value, args.exc_traceback))


def get(name: str = "edge_agent", **bound: object) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name).bind(**bound)
