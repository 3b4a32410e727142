"""Hot reload: noticing a changed config file, and working out what a new config changes.

Kubernetes updates a mounted ConfigMap by writing a new timestamped directory and swapping
the `..data` symlink, so the file's path stays and its inode changes. `ConfigWatcher` polls
each config file's resolved target, inode, mtime and size (a few stats every couple of
seconds; no dependency, no inotify quirks with symlink swaps); a fleet directory is its
`config.yaml` and the node's own file. `plan` compares two validated configs so
the runtime touches only what changed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import logs
from edge_agent.config import AgentConfig
from edge_agent.identity import node_name

WATCH_INTERVAL = 2.0


def file_signature(path: Path) -> tuple[Any, ...] | None:
    """What changes when the file (or the symlink chain leading to it) is replaced."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), stat.st_ino, stat.st_mtime_ns, stat.st_size


def paths_signature(paths: list[Path]) -> tuple[Any, ...] | None:
    """The signatures of a config's files; None while the first (the required one) is
    missing, which is a swap in progress, not a change."""
    first = file_signature(paths[0])
    if first is None:
        return None
    return (first, *(file_signature(path) for path in paths[1:]))


class ConfigWatcher:
    """Calls `on_change()` when the config's files change.

    `paths()` names the files that make up the config (one file, or a fleet directory's
    `config.yaml` and this node's files, see `edge_agent.fleet.watched_paths`): asked on
    every check, since a reload may change the node. The first must exist: while it is
    briefly missing (mid-swap) nothing is compared; the others may come and go (a node's
    own file appearing or disappearing is a change).
    """

    def __init__(self, paths: Path | Callable[[], list[Path]],
                 on_change: Callable[[], Awaitable[Any]],
                 interval: float = WATCH_INTERVAL,
                 baseline: tuple[Any, ...] | None = None) -> None:
        self.paths = paths if callable(paths) else (lambda: [paths])
        self.on_change, self.interval = on_change, interval
        #: the signature the running config was read at (taken before it was read); without
        #: it the first check's, which misses a change made while the agent was starting
        self.baseline = baseline
        self.log = logs.get("edge_agent.reload")

    def signature(self) -> tuple[Any, ...] | None:
        return paths_signature(self.paths())

    async def run(self) -> None:
        last = self.baseline if self.baseline is not None else self.signature()
        while True:
            await asyncio.sleep(self.interval)
            current = self.signature()
            if current is not None and current != last:
                last = current
                try:
                    await self.on_change()
                except Exception as exc:  # the watcher outlives any one bad change
                    self.log.error("config_watch_failed", error=repr(exc)[:500])


@dataclass
class ReloadPlan:
    """What applying a new config takes. Device lists hold device names."""

    stop: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    mqtt: bool = False
    http: bool = False
    log_level: bool = False
    #: settings that change only with a restart of the agent (logged, not applied)
    needs_restart: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {key: value for key, value in {
            "stopped": self.stop, "started": self.start, "restarted": self.restart,
            "mqtt_reconnect": self.mqtt, "http_restart": self.http,
            "needs_agent_restart": self.needs_restart}.items() if value}


def plan(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    result = ReloadPlan()
    identity_changed = (node_name(old.node) != node_name(new.node)
                        or old.mqtt.topic_prefix != new.mqtt.topic_prefix)
    result.mqtt = identity_changed or old.mqtt != new.mqtt
    result.http = old.http != new.http
    result.log_level = old.log_level != new.log_level
    if old.buffer != new.buffer:
        result.needs_restart.append("buffer")
    before = {d.name: d for d in old.devices if d.enabled}
    after = {d.name: d for d in new.devices if d.enabled}
    result.stop = [name for name in before if name not in after]
    for name, device in after.items():
        if name not in before:
            result.start.append(name)
        elif identity_changed or _device_changed(before[name], device):
            result.restart.append(name)  # new topics under a new identity, or new settings
    return result


def _device_changed(old: Any, new: Any) -> bool:
    return type(old) is not type(new) or old.model_dump() != new.model_dump()
