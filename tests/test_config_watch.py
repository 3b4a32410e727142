"""The config watcher: inotify wakes it for the config's own entries only, and a slow poll
(or, without inotify, the old 2 s poll) stands behind the events."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import os
import select
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent import fleet
from edge_agent.dir_events import DirectoryEvents, files_to_watch, interest
from edge_agent.reload import ConfigWatcher, paths_signature

pytestmark = pytest.mark.skipif(DirectoryEvents.open() is None, reason="no inotify here")

NEVER = 3600.0  # a poll period no test waits for: what is seen was seen through an event


def configmap_update(mount: Path, version: str, text: str) -> None:
    """What the kubelet does: a new timestamped directory, then `..data` swapped onto it."""
    mount.mkdir(exist_ok=True)
    (mount / f"..{version}").mkdir()
    (mount / f"..{version}" / "config.yaml").write_text(text)
    os.symlink(f"..{version}", mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "config.yaml").is_symlink():
        (mount / "config.yaml").symlink_to("..data/config.yaml")


class Watching:
    """A ConfigWatcher running on its own loop until the block ends; counts its looks."""

    def __init__(self, paths: Callable[[], list[Path]], **options: Any) -> None:
        self.looks = 0
        self.changes = 0
        self._paths, self._options = paths, options

    def paths(self) -> list[Path]:
        self.looks += 1
        return self._paths()

    async def on_change(self) -> None:
        self.changes += 1

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "not seen in time"
            await asyncio.sleep(0.01)

    def run(self, script: Callable[[Watching], Any]) -> None:
        async def main() -> None:
            options = {"interval": NEVER, "recheck": NEVER, **self._options}
            watcher = ConfigWatcher(self.paths, self.on_change, **options)
            task = asyncio.create_task(watcher.run())
            try:
                await self.until(lambda: self.looks >= 1)  # armed and has its baseline
                await script(self)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        asyncio.run(main())


def test_a_configmap_swap_an_edit_in_place_and_a_replacing_save_are_each_seen_at_once(
        tmp_path):
    mount = tmp_path / "configmap"
    configmap_update(mount, "v1", "devices: []\n")
    path = mount / "config.yaml"

    async def script(w: Watching) -> None:
        configmap_update(mount, "v2", "devices: []\nlog_level: debug\n")
        await w.until(lambda: w.changes == 1)
        (mount / "..v2" / "config.yaml").write_text("devices: []\nlog_level: info\n")
        await w.until(lambda: w.changes == 2)
        os.remove(mount / "config.yaml")  # the link replaced by a plain file, as an editor
        (mount / "config.yaml.tmp").write_text("devices: []\n")  # saves: write, then rename
        os.replace(mount / "config.yaml.tmp", mount / "config.yaml")
        await w.until(lambda: w.changes == 3)

    Watching(lambda: [path]).run(script)


def test_a_node_file_in_a_directory_made_after_start_is_seen(tmp_path):
    root = tmp_path / "fleet"
    root.mkdir()
    (root / "config.yaml").write_text("devices: []\n")

    async def script(w: Watching) -> None:
        (root / "nodes").mkdir()  # not there at start: watched through the fleet directory
        await w.until(lambda: w.looks >= 2)  # woken by `nodes` appearing: now watched too
        (root / "nodes" / "edge-b.yaml").write_text("devices: []\n")
        await w.until(lambda: w.changes == 1)
        (root / "nodes" / "edge-b.yaml").unlink()  # a node's own file going is a change too
        await w.until(lambda: w.changes == 2)

    Watching(lambda: fleet.watched_paths(root, "edge-b")).run(script)


def test_what_else_is_written_beside_the_config_raises_no_event(tmp_path):
    """A buffer file beside the config commits every poll, a log grows: that must not wake
    the watcher, or inotify would cost more at idle than the polling it replaced."""
    config = tmp_path / "config.yaml"
    config.write_text("devices: []\n")
    (tmp_path / "buffer.db").write_bytes(b"")
    events = DirectoryEvents.open()
    assert events is not None
    try:
        assert events.watch(interest([config]), files_to_watch([config]))
        assert events.drain() is False
        for _ in range(50):  # the kernel queues an event within the write that makes it
            with open(tmp_path / "buffer.db", "ab") as buffer:
                buffer.write(b"x" * 100)
        assert not select.select([events], [], [], 0)[0]  # no event queued: no wake-up
        (tmp_path / "buffer.db-wal").write_bytes(b"y")  # another entry made
        os.replace(tmp_path / "buffer.db-wal", tmp_path / "buffer.db-old")  # and renamed
        assert events.drain() is False  # queued, but not about the config
        with open(config, "a") as edit:  # the config's content, in place
            edit.write("log_level: debug\n")
        assert events.drain() is True
        assert events.drain() is False  # drained
        os.replace(tmp_path / "buffer.db-old", config)  # the config's entry replaced
        assert events.drain() is True
    finally:
        events.close()


def test_a_change_already_read_by_a_reload_is_not_read_again(tmp_path):
    """SIGHUP's reload reads the files and records their signature: the watcher, woken by
    the same change, looks and finds nothing new."""
    path = tmp_path / "config.yaml"
    path.write_text("devices: []\n")
    read_at = [paths_signature([path])]

    async def script(w: Watching) -> None:
        path.write_text("devices: []\nlog_level: debug\n")
        read_at[0] = paths_signature([path])  # what a SIGHUP's reload does before reading
        looks = w.looks
        await w.until(lambda: w.looks > looks)  # woken by the write, looked
        assert w.changes == 0
        path.write_text("devices: []\nlog_level: info\n")  # nobody read this one
        await w.until(lambda: w.changes == 1)

    Watching(lambda: [path], read_at=lambda: read_at[0]).run(script)


def test_a_change_before_the_watcher_starts_is_seen_at_its_first_look(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("devices: []\n")
    read_at = paths_signature([path])
    path.write_text("devices: []\nlog_level: debug\n")  # while the agent was starting

    async def script(w: Watching) -> None:
        await w.until(lambda: w.changes == 1)

    Watching(lambda: [path], read_at=lambda: read_at).run(script)


def _a_change_seen_by_polling(path: Path) -> Callable[[Watching], Awaitable[None]]:
    """A script that changes `path` and waits for the watcher to see it by looking again."""
    path.write_text("devices: []\n")

    async def script(w: Watching) -> None:
        path.write_text("devices: []\nlog_level: debug\n")
        await w.until(lambda: w.changes == 1)
        assert w.looks >= 2

    return script


def test_without_inotify_the_files_are_polled(tmp_path):
    path = tmp_path / "config.yaml"
    Watching(lambda: [path], interval=0.02, events=lambda: None).run(
        _a_change_seen_by_polling(path))


def test_a_loop_that_cannot_watch_the_events_fd_falls_back_to_polling(tmp_path, monkeypatch):
    """Some loops watch no file descriptors (Windows' proactor, a loop under a debugger's
    wrapper): add_reader raises, and the watcher polls instead of dying at start."""

    def cannot_watch(self: Any, fd: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError

    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "add_reader",
                        cannot_watch)
    path = tmp_path / "config.yaml"
    Watching(lambda: [path], interval=0.02).run(_a_change_seen_by_polling(path))


def test_a_directory_that_cannot_be_watched_falls_back_to_polling(tmp_path):
    """Watch limits reached (or a directory gone between listing and watching): the
    watcher polls at its interval instead of trusting events that cannot come."""

    class Refusing(DirectoryEvents):
        def watch(self, directories: Any, files: Any = ()) -> bool:
            return False

    def refusing() -> DirectoryEvents | None:
        opened = DirectoryEvents.open()
        assert opened is not None
        return Refusing(opened._libc, opened.fileno())

    path = tmp_path / "config.yaml"
    path.write_text("devices: []\n")

    async def script(w: Watching) -> None:
        await w.until(lambda: w.looks >= 3)  # polled although nothing changed

    Watching(lambda: [path], interval=0.02, events=refusing).run(script)


def test_interest_names_the_entries_that_lead_to_each_file(tmp_path):
    mount = tmp_path / "configmap"
    configmap_update(mount, "v1", "devices: []\n")
    assert interest([mount / "config.yaml"]) == {
        mount: {"config.yaml", "..data"},  # the name, and the symlink the kubelet swaps
        mount / "..v1": {"config.yaml"},  # where the target is edited in place
    }
    root = tmp_path / "fleet"
    root.mkdir()
    assert interest(fleet.watched_paths(root, "edge-b")) == {
        root: {"config.yaml", "nodes", "nodes__edge-b.yaml"}}  # `nodes/` not made yet
