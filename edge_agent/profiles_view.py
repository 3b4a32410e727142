"""`edge-agent profiles [NAME]`: the profile library as a table, or one profile in full.

With NAME it prints where the register map comes from (publisher, document, revision) before
the points, because a profile is only as good as the document it was checked against.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import yaml

from edge_agent import config as config_mod
from edge_agent import profiles


def library_for(config_path: str | None) -> profiles.Library:
    """The library an agent with this config would see (env wins over `profiles_dir`)."""
    configured = None
    path = config_mod.resolve_config_path(config_path)
    if config_path or path.exists():
        data = config_mod.overlay_env(config_mod.read_yaml(path), {})
        configured = data.get("profiles_dir")
    return profiles.Library(profiles.user_dir(configured if isinstance(configured, str)
                                              else None))


def show(library: profiles.Library, name: str | None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    if name is None:
        _list(library, out)
        return 0
    entry = library.get(name)
    if entry is None:
        print(f"edge-agent: {library.unknown(name)}", file=err)
        return 2
    if entry.profile is None:
        print(f"edge-agent: profile '{name}' ({entry.path}) is invalid:", file=err)
        for problem in entry.problems:
            print(problem, file=err)
        return 2
    _describe(entry, out)
    return 0


def _origin(entry: profiles.Entry) -> str:
    return "user (replaces shipped)" if entry.shadows else entry.origin


def _list(library: profiles.Library, out: TextIO) -> None:
    rows = [("NAME", "DRIVER", "ORIGIN", "DEVICE")]
    for name in library.names:
        entry = library.entries[name]
        if entry.profile is None:
            rows.append((name, "?", _origin(entry), "INVALID: " + "; ".join(entry.problems)))
        else:
            rows.append((name, entry.profile.driver, _origin(entry), entry.profile.title))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[3], file=out)
    if library.directory is None:
        print(f"\n(user profiles: none; set profiles_dir or ${profiles.ENV_DIR})", file=out)
    else:
        print(f"\n(user profiles from {library.directory})", file=out)


def _describe(entry: profiles.Entry, out: TextIO) -> None:
    profile = entry.profile
    assert profile is not None
    source = profile.source
    lines = [f"{profile.name}: {profile.title}",
             f"  driver:       {profile.driver}",
             f"  manufacturer: {profile.manufacturer}",
             f"  models:       {', '.join(profile.models)}",
             f"  origin:       {_origin(entry)} ({entry.path})",
             "  register map from:",
             f"    publisher:  {source.publisher}",
             f"    document:   {source.document}",
             f"    revision:   {source.revision}"]
    if source.url:
        lines.append(f"    url:        {source.url}")
    if profile.notes:
        lines.append(f"  notes: {profile.notes}")
    settings = {k: v for k, v in profile.device.items() if k not in profile.point_lists}
    if settings:
        lines.append("  recommended settings (a device entry's own keys win):")
        lines += [f"    {line}" for line in yaml.safe_dump(
            settings, sort_keys=False, default_flow_style=None, width=200).splitlines()]
    print("\n".join(lines), file=out)
    for key, items in profile.point_lists.items():
        print(f"  {key}:", file=out)
        if profile.driver == "modbus":
            _modbus_table(items, out)
        else:
            for line in yaml.safe_dump(items, sort_keys=False, default_flow_style=None,
                                       width=200).splitlines():
                print(f"    {line}", file=out)


def _modbus_table(points: list[dict[str, Any]], out: TextIO) -> None:
    rows = [("NAME", "TABLE", "ADDRESS", "TYPE", "ORDER", "SCALE", "UNIT")]
    for p in points:
        kind = p.get("type", "uint16")
        if kind == "string":
            kind = f"string[{p.get('length', 1)}]"
        rows.append((p["name"], p.get("table", "holding"), f"0x{p['address']:04X}", kind,
                     p.get("order", "ABCD"), f"{p.get('scale', 1)}", p.get("unit") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
