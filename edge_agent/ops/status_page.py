"""The read-only status page at `/`: for a technician standing at the node with a laptop.

Plain HTML that refreshes itself every few seconds; no scripts, no assets, every value escaped.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

REFRESH_SECONDS = 5

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}.connected{color:#176f2c}.disconnected{color:#8a6d00}.error{color:#b00020}
.bad{color:#b00020}.uncertain{color:#8a6d00}small{color:#666}
"""


def render(snap: dict[str, Any]) -> bytes:
    broker = snap["broker"]
    buffer = snap["buffer"]
    reload = snap["reload"]
    rows = "".join(_device_row(device) for device in snap["devices"]) or (
        '<tr><td colspan="6">no devices configured</td></tr>')
    broker_state = "connected" if broker["connected"] else "disconnected"
    broker_error = f" ({escape(broker['error'])})" if broker["error"] else ""
    reload_line = ""
    if reload["attempts"]:
        outcome = "applied" if reload["last_ok"] else f"refused: {reload['last_error']}"
        reload_line = (f"<p>Last config reload: {escape(_age(reload['last_ts']))} ago, "
                       f"{escape(outcome)}</p>")
    identity = snap.get("identity") or {}
    identity_line = ""
    if identity.get("config"):
        identity_line = f"Config {escape(identity['config'])}.\n"
    if identity.get("conflict"):
        identity_line += f'<span class="error">{escape(identity["conflict"])}</span>\n'
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>edge-agent {escape(snap['node'])}</title><style>{_STYLE}</style></head>
<body>
<h1>edge-agent on {escape(snap['node'])}</h1>
<p>Version {escape(snap['version'])}.
{identity_line}Broker <span class="{broker_state}">{broker_state}</span>{broker_error}:
{escape(', '.join(broker['urls']))}.
Buffer: {buffer['depth']} messages, {buffer['bytes']} bytes waiting, {buffer['dropped']} dropped
{'(<span class="error">not writable</span>)' if buffer['degraded'] else ''}.
Published: {snap['published']}.</p>
{reload_line}
<table>
<tr><th>device</th><th>state</th><th>last error</th><th>readings</th><th>errors</th>
<th>last values</th></tr>
{rows}
</table>
<p><small>Read-only. Machine-readable: <a href="/metrics">/metrics</a>,
<a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>.
This page refreshes every {REFRESH_SECONDS} s.</small></p>
</body></html>
"""
    return page.encode()


def _device_row(device: dict[str, Any]) -> str:
    state = device["state"]
    errors = ", ".join(f"{escape(kind)}: {count}" for kind, count in
                       sorted(device["errors"].items())) or "none"
    values = "<br>".join(_value(reading) for reading in device["last_values"]) or "&ndash;"
    where = escape(f"{device['driver']} {device['port'] or ''}".strip())
    return (f"<tr><td><b>{escape(device['name'])}</b><br><small>{where}</small></td>"
            f'<td class="{escape(state)}">{escape(state)}</td>'
            f"<td>{escape(device['error'] or '')}</td>"
            f"<td>{device['readings']}</td><td>{errors}</td><td>{values}</td></tr>")


def _value(reading: dict[str, Any]) -> str:
    quality = reading.get("quality", "good")
    unit = f" {reading['unit']}" if reading.get("unit") else ""
    text = f"{reading['metric']} = {shown(reading['value'])}{unit}"
    age = f" <small>{escape(_age(reading['ts'] / 1000))} ago</small>" if "ts" in reading else ""
    if quality != "good":
        return f'<span class="{escape(quality)}">{escape(text)} ({escape(quality)})</span>{age}'
    return f"{escape(text)}{age}"


def shown(value: Any) -> str:
    """A published value as a technician should read it: in the JSON spelling the payloads
    use (`true`, `false`, `null`), never Python's (`False`, `None`), and no `-0.0`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value + 0.0)  # -0.0 + 0.0 is 0.0
    return str(value)


def _age(epoch_seconds: float | None) -> str:
    if not epoch_seconds:
        return "?"
    seconds = max(0.0, time.time() - epoch_seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
