"""Readiness (/readyz): the one place that decides whether this agent is fit for traffic.

Decided from the snapshot (plain data taken on the event loop), so that every reason not
to be ready is also visible on the status page and in /metrics.
"""

from __future__ import annotations

from typing import Any


def problems(snap: dict[str, Any] | None) -> list[str]:
    """Why the agent is not ready, one line each; empty when it is."""
    if snap is None:
        return ["event loop not responding"]
    found = []
    if not snap["broker"]["connected"]:
        error = snap["broker"]["error"]
        found.append("not connected to the broker" + (f": {error}" if error else ""))
    if snap["buffer"]["degraded"]:
        found.append(f"the buffer is not writable: {snap['buffer']['degraded']}")
    return found
