"""Hot reload: noticing a changed config file, and working out what a new config changes.

Kubernetes updates a mounted ConfigMap by writing a new timestamped directory and swapping
the `..data` symlink, so the file's path stays and its inode changes. `ConfigWatcher`
compares each config file's signature (resolved target, inode, mtime and size): when inotify
says something changed in a directory holding one of them (`edge_agent.dir_events`), and every
RECHECK_EVERY in case an event cannot reach it (a network filesystem, a symlink through a
third directory); where inotify is not to be had it compares every WATCH_INTERVAL, as it did
before the events. A fleet directory is its `config.yaml` and the node's own file. `plan`
compares two validated configs so the runtime touches only what changed.
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
from edge_agent.dir_events import DirectoryEvents, files_to_watch, interest
from edge_agent.identity import node_name

#: how often the files are compared where inotify is not to be had
WATCH_INTERVAL = 2.0
#: how often they are compared anyway with inotify (what no event reaches is seen this late)
RECHECK_EVERY = 30.0
#: after an event, how long the directories must stay quiet before the files are compared
#: (an editor's save or a `cat >` is several events; the kubelet's swap is one rename)
SETTLE = 0.1
#: ... but no longer than this after the first event of a burst
SETTLE_AT_MOST = 2.0
_UNREAD: Any = object()  # no signature taken yet


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

    `events` opens the inotify instance (tests pass one returning None to take the polling
    road); `interval` is that road's period, `recheck` the slow poll beside the events.
    """

    def __init__(self, paths: Path | Callable[[], list[Path]],
                 on_change: Callable[[], Awaitable[Any]],
                 interval: float = WATCH_INTERVAL,
                 read_at: Callable[[], tuple[Any, ...] | None] | None = None,
                 recheck: float = RECHECK_EVERY,
                 events: Callable[[], DirectoryEvents | None] = DirectoryEvents.open) -> None:
        self.paths = paths if callable(paths) else (lambda: [paths])
        self.on_change, self.interval, self.recheck = on_change, interval, recheck
        #: the signature the files were last read at, by anyone (the agent's start or any
        #: reload, SIGHUP's too: taken before reading), so a change made while the agent was
        #: starting is noticed and one a SIGHUP already read is not read again. Without it,
        #: the first check's
        self.read_at = read_at or (lambda: None)
        self._open_events = events
        self._stirred = asyncio.Event()
        self.log = logs.get("edge_agent.reload")

    async def run(self) -> None:
        events = self._open_events()
        loop = asyncio.get_running_loop()
        if events is not None:
            try:
                loop.add_reader(events.fileno(), self._on_events, events)
            except (NotImplementedError, OSError):  # a loop that cannot watch an fd: poll
                events.close()
                events = None
        self.log.debug("config_watching", inotify=events is not None)
        try:
            await self._watch(events)
        finally:
            if events is not None:
                loop.remove_reader(events.fileno())
                events.close()

    async def _watch(self, events: DirectoryEvents | None) -> None:
        tried = _UNREAD  # the signature this watcher last reacted to
        while True:
            paths = self.paths()
            armed = events is not None and events.watch(interest(paths), files_to_watch(paths))
            # armed before comparing: a change from here on raises an event, one before it
            # is in the comparison
            current, known = paths_signature(paths), self.read_at()
            if known is None and tried is _UNREAD:
                tried = current  # nothing to compare with: this is the baseline
            elif current is not None and current != known and current != tried:
                tried = current
                try:
                    await self.on_change()
                except Exception as exc:  # the watcher outlives any one bad change
                    self.log.error("config_watch_failed", error=repr(exc)[:500])
                continue  # the reload may have changed the node, so the paths: arm again
            await self._next_look(self.recheck if armed else self.interval)

    async def _next_look(self, timeout: float) -> None:
        """Returns when the directories have changed and gone quiet, or after `timeout`."""
        try:
            await asyncio.wait_for(self._stirred.wait(), timeout)
        except TimeoutError:
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + SETTLE_AT_MOST
        while self._stirred.is_set() and loop.time() < give_up:
            self._stirred.clear()
            await asyncio.sleep(SETTLE)

    def _on_events(self, events: DirectoryEvents) -> None:
        if events.drain():
            self._stirred.set()


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
