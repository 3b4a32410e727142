"""Library logs, warnings and uncaught exceptions become structlog JSON events: no raw
traceback on stdout or stderr (issue #18, item 13)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import warnings

import pytest
import structlog

from edge_agent import logs


@pytest.fixture
def structured(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = structlog.get_config()
    logs.configure("info", "n1")
    yield
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


class _Exploding(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        raise ValueError(f"garbage: {data[:4]!r}")


def test_a_protocol_failing_on_garbage_is_one_json_event_not_a_traceback(structured, capfd):
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(lambda r, w: w.write(b"\xde\xad\xbe\xef"),
                                            "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(_Exploding, "127.0.0.1", port)
        for _ in range(200):  # until asyncio has reported the failure and closed it
            if transport.is_closing():
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and err == ""
    (event,) = [e for e in _events(out) if e["event"] == "library_log"]
    assert event["logger"] == "asyncio" and event["level"] == "error"
    assert event["message"].startswith("Fatal error: protocol.data_received() call failed")
    assert event["error"] == "ValueError: garbage: b'\\xde\\xad\\xbe\\xef'"
    assert event["frames"][-1].endswith("in data_received") and event["node"] == "n1"


def test_warnings_thread_crashes_and_uncaught_exceptions_are_json_events(structured, capfd):
    warnings.warn("something odd", UserWarning, stacklevel=1)
    logging.getLogger("some.library").log(45, "a level of its own")

    def crash() -> None:
        raise RuntimeError("thread bug")

    thread = threading.Thread(target=crash, name="worker-1")
    thread.start()
    thread.join()
    try:
        raise KeyError("main bug")
    except KeyError:
        sys.excepthook(*sys.exc_info())
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and err == ""
    events = {e["event"]: e for e in _events(out)}
    library = [e for e in _events(out) if e["event"] == "library_log"]
    assert "something odd" in library[0]["message"]
    assert (library[1]["logger"], library[1]["level"]) == ("some.library", "error")
    assert events["thread_crashed"]["thread"] == "worker-1"
    assert events["thread_crashed"]["error"] == "RuntimeError: thread bug"
    assert events["uncaught_exception"]["error"] == "KeyError: 'main bug'"
