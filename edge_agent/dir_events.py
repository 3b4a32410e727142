"""Change events for a few directories, from Linux inotify: a wake-up only when one changes.

Why: the config watcher stat-ed its files every 2 s, half a wake-up of the event loop a
second at idle (with a second's poll, a tenth of the agent's idle CPU), and a change still
took up to 2 s to be seen. With inotify the loop sleeps until something in a watched
directory changes, and a ConfigMap swap is seen at once.

Two kinds of watch keep the events to the config's own: a directory's says only that its
entries changed (made, removed, renamed: a ConfigMap's `..data` swap, an editor's save), and
events naming other entries are dropped; each file's own says its content changed (an edit in
place). What else is written beside the config (a buffer committing every poll, a log) raises
no event at all, so it cannot wake the agent.

The events are a hint, never the truth: one that matters (or the directory itself going, or
a queue overflow) means "look again", and the watcher compares the files' signatures as
before. A missed event costs time, not correctness, so the watcher keeps a slow poll beside
it.

The standard library has no inotify; these are libc's three calls through ctypes. Where
they are missing or refuse (not Linux, `max_user_instances` or `max_user_watches` reached),
`open` returns None and the watcher polls as it always did.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
#: a directory's entries changing, or the directory itself going (not its files' content)
ENTRIES_CHANGE = (IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
                  | IN_MOVE_SELF | IN_ONLYDIR)
#: a file's content or metadata changing, or the file going (opening and reading do not:
#: reading the config must not wake the watcher)
CONTENT_CHANGES = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF
#: events about the watch itself, which name no entry: the directory went, or events were lost
ABOUT_THE_WATCH = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_Q_OVERFLOW
_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC  # IN_NONBLOCK, IN_CLOEXEC
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in
               ("inotify_init1", "inotify_add_watch", "inotify_rm_watch")):
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class DirectoryEvents:
    """An inotify instance watching a set of directories; its fd turns readable on a change."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc, self._fd = libc, fd
        self._watches: dict[Path, int] = {}
        self._entries_of: dict[int, set[bytes]] = {}  # a directory's watch: entries that matter
        self._files: set[int] = set()  # the files' watches: every event of theirs matters

    @classmethod
    def open(cls) -> DirectoryEvents | None:
        """An instance, or None where inotify is not to be had (the caller polls instead)."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(_NONBLOCK_CLOEXEC)
        return None if fd < 0 else cls(libc, fd)

    def fileno(self) -> int:
        return self._fd

    def watch(self, directories: Mapping[Path, set[str]], files: Iterable[Path] = ()) -> bool:
        """Watches exactly these from now on: each directory for its named entries being
        made, removed or renamed, each file for its content. Each is added again even if
        watched: the path may name another inode since (a replaced directory's watch ended
        with it). False if one could not be watched (gone meanwhile, no permission, the
        watch limit): then events cannot be relied on until the next call."""
        watches: dict[Path, int] = {}
        entries_of: dict[int, set[bytes]] = {}
        for directory, entries in directories.items():
            if (wd := self._add(directory, ENTRIES_CHANGE)) is not None:
                watches[directory] = wd  # two paths to one directory share its watch
                entries_of.setdefault(wd, set()).update(map(os.fsencode, entries))
        for file in files:
            if (wd := self._add(file, CONTENT_CHANGES)) is not None:
                watches[file] = wd
        complete = len(watches) == len(directories) + len(set(files))
        for wd in set(self._watches.values()) - set(watches.values()):
            self._libc.inotify_rm_watch(self._fd, wd)  # EINVAL if it ended already: fine
        self._watches, self._entries_of = watches, entries_of
        self._files = set(watches.values()) - set(entries_of)
        return complete

    def _add(self, path: Path, mask: int) -> int | None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask)
        return None if wd < 0 else wd

    def drain(self) -> bool:
        """Reads every queued event; True if one of them matters (see the module's doc)."""
        matters = False
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return matters
            except InterruptedError:
                continue
            except OSError:
                return True  # unreadable: look rather than miss a change
            if not chunk:
                return matters
            matters = self._matters(chunk) or matters

    def _matters(self, chunk: bytes) -> bool:
        offset = 0
        while offset + _EVENT.size <= len(chunk):
            wd, mask, _cookie, length = _EVENT.unpack_from(chunk, offset)
            name = chunk[offset + _EVENT.size:offset + _EVENT.size + length].split(b"\0", 1)[0]
            offset += _EVENT.size + length
            if mask & ABOUT_THE_WATCH:
                return True
            if wd in self._files or name in self._entries_of.get(wd, ()):
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def files_to_watch(paths: list[Path]) -> list[Path]:
    """The files behind `paths` that exist, through symlinks: their content is watched."""
    found: dict[Path, None] = {}
    for path in paths:
        with contextlib.suppress(OSError, RuntimeError):
            real = Path(os.path.realpath(path))
            if real.is_file():
                found[real] = None
    return list(found)


def interest(paths: list[Path]) -> dict[Path, set[str]]:
    """Which directories to watch for `paths`, and which of their entries matter.

    A file is seen being replaced in the directory holding it as named, and through
    symlinks in the one holding its target; the first hop of a relative
    symlink is an entry too (a ConfigMap's `config.yaml -> ..data/config.yaml`: the kubelet
    swaps `..data`). A directory not there yet is watched through its nearest existing
    parent, for the entry that will lead to it (`nodes/` made after start-up). Symlinks
    through further directories are left to the watcher's slow poll.
    """
    found: dict[Path, set[str]] = {}

    def add(directory: Path, entry: str) -> None:
        existing, missing = _nearest_existing(directory)
        found.setdefault(existing, set()).add(missing or entry)

    for path in paths:
        path = path.absolute()
        add(path.parent, path.name)
        with contextlib.suppress(OSError):
            hop = Path(os.readlink(path)).parts
            if hop and hop[0] not in ("/", ".", ".."):
                add(path.parent, hop[0])
        with contextlib.suppress(OSError, RuntimeError):
            real = Path(os.path.realpath(path))
            if real != path:
                add(real.parent, real.name)
    return found


def _nearest_existing(directory: Path) -> tuple[Path, str | None]:
    """The directory, or its nearest existing parent and the name of the child that leads
    towards it."""
    missing = None
    while not directory.is_dir() and directory != directory.parent:
        missing, directory = directory.name, directory.parent
    return directory, missing
