"""Which boot of the machine last had the buffer open: tells a power cut from a crash.

A commit survives the agent being killed (it is in the OS page cache) but not the machine
going down before the WAL was synced. So when the buffer is opened, what matters is whether
the machine went down under the last agent that had it open: the file records the boot id
(`/proc/sys/kernel/random/boot_id`, the host's even inside a container) while an agent has
it open, and clears it when it closes cleanly. Found set to another boot, the file may lack
its last second of commits, and with them the last `seq` numbers handed out (and maybe
published): the seqs then continue after their reservation (`edge_agent.store.seqs`).

Knowing that is also what lets the buffer thread skip the WAL's fsync when every message
committed since the last one has already been acknowledged by the broker: a power cut can
then take nothing owed, and the seq numbers it would take back are never handed out again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
#: the `meta` key that holds the boot id while an agent has the file open
MARKER = "open_on_boot"


def current_boot(path: Path = BOOT_ID_PATH) -> str | None:
    """This boot's id, or None where the system has none (then nothing is skipped)."""
    try:
        boot = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return boot or None


def read_marker(db: sqlite3.Connection) -> str | None:
    """The boot the file was open on when it was last written (None: closed cleanly)."""
    found = db.execute("SELECT value FROM meta WHERE key = ?", (MARKER,)).fetchone()
    if found is None:
        return None
    value = found[0]
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def swap_marker(db: sqlite3.Connection, boot: str) -> str | None:
    """Records `boot` as the one the file is open on; returns the one found."""
    found = read_marker(db)
    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (MARKER, boot))
    return found


def clear_marker(db: sqlite3.Connection) -> None:
    """The clean close: the file holds everything committed (the caller checkpoints)."""
    db.execute("DELETE FROM meta WHERE key = ?", (MARKER,))


def went_down_under(found: str | None, boot: str | None) -> bool:
    """True when the machine restarted while an agent had the file open."""
    return found is not None and found != boot
