"""Readiness (/readyz): the one place that decides whether this agent is fit for traffic.

Decided from the snapshot (plain data taken on the event loop), so that every reason not
to be ready is also visible on the status page and in /metrics.
"""

from __future__ import annotations

from typing import Any

#: seconds /readyz reports a buffer file that was lost and rebuilt (it works again, but a
#: disk that loses files wants a look; the metric edge_agent_buffer_recoveries_total stays)
RECOVERY_NOTICE = 60.0


def problems(snap: dict[str, Any] | None) -> list[str]:
    """Why the agent is not ready, one line each; empty when it is."""
    if snap is None:
        return ["event loop not responding"]
    found = []
    if not snap["broker"]["connected"]:
        error = snap["broker"]["error"]
        found.append("not connected to the broker" + (f": {error}" if error else ""))
    buffer = snap["buffer"]
    if buffer["degraded"]:
        found.append(f"the buffer is not writable: {buffer['degraded']}")
    if buffer.get("state_degraded"):
        found.append(f"state is not durable: {buffer['state_degraded']}")
    recovery = buffer.get("last_recovery")
    if recovery and recovery["seconds_ago"] < RECOVERY_NOTICE:
        found.append(f"the buffer file was rebuilt {recovery['seconds_ago']:.0f} s ago "
                     f"({recovery['problem']}; see buffer_recovered in the log): check the disk")
    if buffer.get("stall_after") and buffer.get("stalled_for", 0) >= buffer["stall_after"]:
        found.append(f"publishing stalled: {buffer['depth']} messages waiting, none "
                     f"acknowledged for {buffer['stalled_for']:.0f} s")
    conflict = snap.get("identity", {}).get("conflict")
    if conflict:
        found.append(conflict)
    return found
