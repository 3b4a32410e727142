"""Drivers are found through the entry-point group `edge_agent.drivers`.

Built-in drivers are registered in this project's own pyproject.toml exactly like a third-party
package would register one, so there is one path for both. A driver is imported only when a
device names it, and an import failure becomes a DriverLoadError for that driver alone.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from edge_agent.driver import Driver
from edge_agent.errors import DriverLoadError

GROUP = "edge_agent.drivers"


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


@cache
def load(name: str) -> type[Driver]:
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        raise DriverLoadError(f"'{name}' is not one of {', '.join(available()) or 'no drivers'}")
    try:
        driver_cls = matches[0].load()
    except Exception as exc:  # any import-time failure disables this driver only
        raise DriverLoadError(f"driver '{name}' failed to import: {exc!r}") from exc
    if not (isinstance(driver_cls, type) and issubclass(driver_cls, Driver)):
        raise DriverLoadError(f"driver '{name}' does not name a Driver subclass")
    return driver_cls
