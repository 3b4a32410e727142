"""Small state files (seq reservations, the Sparkplug bdSeq) that degrade like the buffer.

A state file is written atomically (a temporary file, fsync, rename, fsync of the folder),
so a crash leaves the old or the new content, never half of either. It carries a CRC32 of
its body: a file that does not parse or does not match is reported (`state_file_corrupt`,
moved aside to `<name>.corrupt-<time>`), never silently taken for a fresh start. When the
folder is read-only or full, the state is kept in memory: `degraded` says why (for
/readyz and /metrics), the first failure and the recovery are logged, and every later save
tries the disk again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any


class StateFile:
    def __init__(self, path: Path, what: str, log: Any = None) -> None:
        self.path = Path(path)
        self.what = what  # for messages: "seq state", "sparkplug bdSeq"
        self.log = log
        self.degraded: str | None = None
        self.corrupt = 0  # files found broken (reported and moved aside) since start
        self.failures = 0  # saves that did not reach the disk

    def load(self) -> dict[str, Any] | None:
        """The stored body, or None when there is none or it is broken (and reported)."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._broken(f"unreadable: {exc.strerror or exc}", move=False)
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if "crc32" in data:  # written by this version; older files are a bare body
                body = data.get("body")
                if not isinstance(body, dict) or _crc(body) != data["crc32"]:
                    raise ValueError("checksum mismatch")
                return body
            return data
        except ValueError as exc:
            self._broken(str(exc) or type(exc).__name__, move=True)
            return None

    def save(self, body: dict[str, Any]) -> bool:
        """Writes `body` durably; False (and degraded) when the disk would not take it."""
        data = json.dumps({"body": body, "crc32": _crc(body)}).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_folder(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.failures += 1
            reason = exc.strerror or str(exc)
            if self.degraded is None:
                self._log("error", "state_file_degraded", what=self.what, path=str(self.path),
                          error=reason, fallback="memory")
            self.degraded = f"{self.what} file {self.path} not writable ({reason}); kept in memory"
            return False
        if self.degraded is not None:
            self._log("warning", "state_file_recovered", what=self.what, path=str(self.path))
            self.degraded = None
        return True

    def report_broken(self, error: str) -> None:
        """The file parsed but its content is not usable: reported and moved aside."""
        self._broken(error, move=True)

    def _broken(self, error: str, move: bool) -> None:
        self.corrupt += 1
        moved_to = None
        if move:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
                moved_to = str(aside)
        self._log("error", "state_file_corrupt", what=self.what, path=str(self.path),
                  error=error, moved_to=moved_to)

    def _log(self, level: str, event: str, **fields: Any) -> None:
        if self.log is not None:
            getattr(self.log, level)(event, **fields)


def _crc(body: dict[str, Any]) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def _fsync_folder(folder: Path) -> None:
    """Makes the rename itself durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
