"""What the agent knows about itself, as plain data: read by /metrics, /readyz and /.

The snapshot is taken on the event loop (the HTTP server runs in a thread of its own), so
the outbox's SQLite connection and the runtime's dicts are only ever touched from the loop,
and a scrape never sees a half-updated counter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from edge_agent import __version__

if TYPE_CHECKING:
    from edge_agent.runtime import Agent, DeviceRunner

T = TypeVar("T")


def call_in_loop(loop: asyncio.AbstractEventLoop | None, func: Callable[[], T],
                 timeout: float) -> T | None:
    """Runs `func` on `loop` from another thread; None when the loop does not answer in time.

    Called from the loop's own thread it simply runs `func` (in-process tests do that).
    """
    if loop is None or loop.is_closed():
        return None
    try:
        if asyncio.get_running_loop() is loop:
            return func()
    except RuntimeError:
        pass
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(func())
        except BaseException as exc:
            future.set_exception(exc)

    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:  # the loop closed in between
        return None
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        return None


def take(agent: Agent) -> dict[str, Any]:
    publisher, outbox = agent.publisher, agent.outbox
    return {
        "node": agent.node,
        "version": __version__,
        "broker": {
            "connected": bool(publisher is not None and publisher.connected.is_set()),
            "urls": [_without_password(url) for url in agent.config.mqtt.urls],
            "error": publisher.last_error if publisher is not None else None,
        },
        "published": agent.published_total(),
        "buffer": {
            "depth": outbox.depth() if outbox is not None else 0,
            "bytes": outbox.size_bytes() if outbox is not None else 0,
            "dropped": getattr(outbox, "dropped", 0),
            "degraded": getattr(outbox, "degraded", None),  # why it cannot write, or None
            "durable": agent.config.buffer.path is not None,
        },
        "reload": dict(agent.reload_stats),
        "devices": [_device(runner) for runner in agent.runners.values()],
    }


def _device(runner: DeviceRunner) -> dict[str, Any]:
    state = runner.state
    return {
        "name": state.name,
        "driver": runner.config.driver,
        "port": runner.config.port,
        "state": state.state,
        "error": state.error,
        "readings": state.readings,
        "polls": state.polls,
        "skipped_ticks": state.skipped_ticks,
        "suppressed": runner.normalizer.suppressed,
        "errors": dict(state.errors),
        "writes": dict(runner.writes),
        "last_values": list(state.last_values.values()),
    }


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
