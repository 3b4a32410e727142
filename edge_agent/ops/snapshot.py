"""What the agent knows about itself, as plain data: read by /metrics, /readyz and /.

The snapshot is taken on the event loop (the HTTP server runs in a thread of its own), so
the outbox's SQLite connection and the runners' dicts are only ever touched from the loop,
and a scrape never sees a half-updated counter. It reads delivery and the devices through
narrow read-only protocols, never the agent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from edge_agent import __version__
from edge_agent.outbox import Outbox

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


_NO_BUFFER: dict[str, Any] = {
    "depth": 0, "bytes": 0, "dropped": 0, "degraded": None, "quarantined": 0, "lost": 0,
    "seq_skipped": 0, "recoveries": 0, "checkpoint_failures": 0, "wal_bytes": 0,
    "state_degraded": None, "last_recovery": None}


class DeliveryState(Protocol):
    """What the snapshot reads of delivery (`edge_agent.delivery.Delivery`)."""

    outbox: Outbox

    @property
    def stall_after(self) -> float: ...

    def stalled_for(self) -> float: ...

    def state_degraded(self) -> str | None: ...

    @property
    def last_error(self) -> str | None: ...

    def is_connected(self) -> bool: ...

    def published_total(self) -> int: ...


class DeviceReport(Protocol):
    """A device that reports its figures as plain data (a supervised device runner)."""

    def report(self) -> dict[str, Any]: ...


class IdentityState(Protocol):
    """What the snapshot reads of the node's identity (`edge_agent.conflict.NodeIdentity`)."""

    instance: str
    config_hash: str
    conflict: str | None
    other: str | None
    detected: int


def take(*, node: str, broker_urls: list[str], durable: bool,
         delivery: DeliveryState | None, devices: Iterable[DeviceReport],
         reload: Mapping[str, Any],
         downlink_rejected: Mapping[str, int] | None = None,
         identity: IdentityState | None = None) -> dict[str, Any]:
    """The agent's state as plain data; call on the event loop."""
    outbox = delivery.outbox if delivery is not None else None
    stats = outbox.stats() if outbox is not None else _NO_BUFFER
    if delivery is not None and not stats["state_degraded"]:
        stats = {**stats, "state_degraded": delivery.state_degraded()}
    return {
        "node": node,
        "version": __version__,
        "identity": {
            "instance": identity.instance if identity is not None else None,
            "config": identity.config_hash if identity is not None else None,
            "conflict": identity.conflict if identity is not None else None,
            "other": identity.other if identity is not None else None,
        },
        "broker": {
            "connected": bool(delivery is not None and delivery.is_connected()),
            "urls": [_without_password(url) for url in broker_urls],
            "error": delivery.last_error if delivery is not None else None,
        },
        "published": delivery.published_total() if delivery is not None else 0,
        "buffer": {
            # depth, bytes, dropped, degraded (why it cannot write, or None), quarantined,
            # lost, seq_skipped, recoveries, checkpoint_failures, wal_bytes, state_degraded,
            # last_recovery ({seconds_ago, problem} of the last rebuilt buffer file, or None)
            **stats,
            "durable": durable,
            # messages waiting while connected and none acknowledged, in seconds; past
            # `stall_after` the pump is stalled
            "stalled_for": delivery.stalled_for() if delivery is not None else 0.0,
            "stall_after": delivery.stall_after if delivery is not None else 0.0,
        },
        "reload": dict(reload),
        "downlink_rejected": dict(downlink_rejected or {}),
        "devices": [device.report() for device in devices],
    }


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
