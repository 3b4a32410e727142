"""Device profiles: a known device's points and recommended settings, written once as data.

A profile is a YAML file. Shipped profiles come from the packages registered in the
entry-point group `edge_agent.profiles` (the built-in drivers register theirs exactly as a
third-party package would); the user's come from the directory named by config
`profiles_dir` or env `EDGE_AGENT_PROFILES_DIR`, and a user profile with a shipped one's name
replaces it. A profile is validated by the same model as a hand-written device of its
driver, so a profile cannot hold a point a user could not have typed.

A device entry that names `profile:` is the profile's `device` mapping with the entry laid
over it: the entry's own keys win, its `points` (or `fields`) override the profile's by name
and add new ones, and `points_only` keeps a subset of the profile's. See docs/profiles.md.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.config_problems import format_problems

GROUP = "edge_agent.profiles"
ENV_DIR = "EDGE_AGENT_PROFILES_DIR"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
#: a placeholder port so a profile without one validates as a device would
_CHECK_PORT = "profile-check"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Strict):
    """The vendor document a register map was written from: the authority to check against."""

    document: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    publisher: str = Field(min_length=1)
    url: str | None = None


class IdRegister(_Strict):
    """A register whose value identifies the model (scan reads it, read only)."""

    table: str = "holding"
    address: int = Field(ge=0, le=65535)
    values: list[int] = Field(min_length=1)


class Match(_Strict):
    """How `edge-agent scan --modbus` recognises a device this profile fits."""

    vendor: str | None = None  # case-insensitive substring of the FC 43/14 VendorName
    product: str | None = None  # ... of the ProductCode or ProductName
    sunspec: list[int] = Field(default_factory=list)  # SunSpec model ids that must be present
    id_register: IdRegister | None = None


class WireExample(_Strict):
    """Register words as a document (or a capture it cites) shows them, and their value:
    served as they are, they check the profile's type, word order and scale end to end."""

    words: list[str] = Field(min_length=1)  # hex, one 16-bit register each, e.g. "4366"
    value: Any
    source: str = Field(min_length=1)  # where the words are shown

    @property
    def registers(self) -> list[int]:
        return [int(word, 16) for word in self.words]


class Profile(_Strict):
    """One profile file. `device` holds the device keys it supplies, points included."""

    name: str = Field(pattern=NAME_PATTERN)
    driver: str = Field(min_length=1)
    title: str = Field(min_length=1)
    manufacturer: str = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    source: Source
    device: dict[str, Any]
    #: engineering values from the document's examples or ranges, by point name: the test
    #: simulator serves them and checks the agent publishes them
    examples: dict[str, Any] = Field(default_factory=dict)
    wire_examples: dict[str, WireExample] = Field(default_factory=dict)
    match: Match | None = None
    notes: str | None = None

    @property
    def point_lists(self) -> dict[str, list[dict[str, Any]]]:
        """The lists of named items (Modbus `points`, line `fields`) the profile supplies."""
        return {key: value for key, value in self.device.items() if _is_named_list(value)}

    @property
    def point_names(self) -> list[str]:
        return [item["name"] for items in self.point_lists.values() for item in items]


@dataclass
class Entry:
    """A profile as found: where it came from, and what is wrong with it if anything."""

    name: str
    origin: str  # "shipped" or "user"
    path: str
    profile: Profile | None = None
    problems: list[str] = field(default_factory=list)
    shadows: str | None = None  # a user profile replacing a shipped one: the shipped path


def _is_named_list(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(item, dict) and "name" in item for item in value))


def shipped_dirs() -> list[Traversable]:
    """The profile directories of installed packages (entry-point group `edge_agent.profiles`,
    each naming a package whose `*.yaml` files are profiles)."""
    dirs = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            dirs.append(files(ep.value))
        except (ModuleNotFoundError, TypeError):
            continue  # a broken registration costs its own profiles only
    return dirs


def user_dir(configured: str | Path | None = None,
             environ: dict[str, str] | None = None) -> Path | None:
    env = os.environ if environ is None else environ
    value = env.get(ENV_DIR) or configured
    return Path(value) if value else None


def _yaml_files(directory: Traversable | Path) -> Iterable[Traversable | Path]:
    try:
        children = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    return [c for c in children if c.name.endswith((".yaml", ".yml")) and c.is_file()]


def _parse(path: Traversable | Path, origin: str) -> Entry:
    stem = path.name.rsplit(".", 1)[0]
    entry = Entry(stem, origin, str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        entry.problems.append(f"{path}: cannot read: {exc}")
        return entry
    if not isinstance(data, dict):
        entry.problems.append(f"{path}: a profile is a mapping")
        return entry
    data.setdefault("name", stem)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:

        entry.problems += [f"{path}: {line}" for line in format_problems(exc)]
        return entry
    if profile.name != stem:
        entry.problems.append(f"{path}: name '{profile.name}' differs from the file name")
        return entry
    entry.problems += [f"{path}: {line}" for line in check(profile)]
    entry.profile = None if entry.problems else profile
    return entry


def check(profile: Profile) -> list[str]:
    """Validates a profile's device mapping with its driver's own config model."""
    from edge_agent import registry
    from edge_agent.errors import DriverLoadError

    try:
        model = registry.load(profile.driver).config_model
    except DriverLoadError as exc:
        return [f"driver: {exc}"]
    device = {"name": "profile-check", "port": _CHECK_PORT, **profile.device,
              "driver": profile.driver}
    try:
        model.model_validate(device)
    except ValidationError as exc:
        return format_problems(exc, "device")
    problems = [f"examples: no point named {name}"
                for name in sorted(set(profile.examples) - set(profile.point_names))]
    points = {p["name"]: p for p in profile.device.get("points", [])}
    for name, wire in profile.wire_examples.items():
        point = points.get(name)
        if point is None:
            problems.append(f"wire_examples: no Modbus point named {name}")
            continue
        try:
            words = wire.registers
        except ValueError:
            problems.append(f"wire_examples.{name}.words: hex register values, like '4366'")
            continue
        from edge_agent.decode import register_count

        expected = register_count(point.get("type", "uint16"), point.get("length", 1))
        if len(words) != expected or any(not 0 <= w <= 0xFFFF for w in words):
            problems.append(f"wire_examples.{name}.words: {expected} register(s) of 16 bits")
    return problems


class Library:
    """Every profile visible to one agent: the shipped ones, then the user's over them."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self.entries: dict[str, Entry] = {}
        for entry in _shipped():
            self.entries.setdefault(entry.name, entry)
        if self.directory is not None:
            for path in _yaml_files(self.directory):
                entry = _parse(path, "user")
                shipped = self.entries.get(entry.name)
                if shipped is not None:
                    entry.shadows = shipped.path
                self.entries[entry.name] = entry

    @property
    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def unknown(self, name: Any) -> str:
        """The message for a name that is no profile: the close ones first, then all."""
        close = difflib.get_close_matches(str(name), self.names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return (f"{name!r} is not a known profile{hint}; known profiles: "
                f"{', '.join(self.names) or 'none'}")


@cache
def _shipped() -> tuple[Entry, ...]:
    return tuple(_parse(path, "shipped") for directory in shipped_dirs()
                 for path in _yaml_files(directory))


def match_rules(library: Library, driver: str = "modbus") -> list[dict[str, Any]]:
    """How a driver's line search (`scan`) recognises each profile, as plain data: the driver
    matches them without importing the profile machinery."""
    rules = []
    for name in library.names:
        profile = library.entries[name].profile
        if profile is not None and profile.driver == driver and profile.match is not None:
            rules.append({"name": name, **profile.match.model_dump(exclude_none=True)})
    return rules


def apply(profile: Profile, entry: dict[str, Any]) -> dict[str, Any]:
    """The device entry with the profile under it. Raises ValueError naming the bad key."""
    merged = copy.deepcopy(profile.device)
    lists = profile.point_lists
    only = entry.get("points_only")
    if only is not None:
        if not isinstance(only, list) or not all(isinstance(n, str) for n in only):
            raise ValueError("points_only: a list of point names")
        known = set(profile.point_names)
        missing = [n for n in only if n not in known]
        if missing:
            raise ValueError(f"points_only: the profile has no point named "
                             f"{', '.join(missing)}; it has {', '.join(profile.point_names)}")
        for key in lists:
            merged[key] = [p for p in merged[key] if p["name"] in only]
    for key, value in entry.items():
        if key in lists and isinstance(value, list):
            merged[key] = _merge_by_name(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    merged.setdefault("driver", profile.driver)
    return merged


def _merge_by_name(base: list[dict[str, Any]], overlay: list[Any]) -> list[Any]:
    """Items of `overlay` replace keys of the same-named item in `base`; new names append."""
    result = [dict(item) for item in base]
    index = {item["name"]: i for i, item in enumerate(result)}
    for item in overlay:
        name = item.get("name") if isinstance(item, dict) else None
        if name in index:
            result[index[name]].update(item)
        else:
            result.append(item)  # a new point, or garbage the driver's model will name
    return result


def resolve(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Replaces each device entry that names a profile by the merged entry.

    Returns the new data and the problems (an unknown profile, a broken user profile, a bad
    `points_only`), each led by the field's path as config errors are.
    """
    devices = data.get("devices")
    if not isinstance(devices, list) or not any(
            isinstance(d, dict) and "profile" in d for d in devices):
        return data, []
    configured = data.get("profiles_dir")
    library = Library(user_dir(configured if isinstance(configured, str | Path) else None))
    problems: list[str] = []
    resolved = []
    for index, device in enumerate(devices):
        if not isinstance(device, dict) or "profile" not in device:
            resolved.append(device)
            continue
        where = f"devices[{index}]"
        name = device["profile"]
        found = library.get(name) if isinstance(name, str) else None
        if found is None:
            problems.append(f"{where}.profile: {library.unknown(name)}")
        elif found.profile is None:
            problems.append(f"{where}.profile: profile '{name}' is invalid: "
                            + "; ".join(found.problems))
        elif device.get("driver", found.profile.driver) != found.profile.driver:
            problems.append(f"{where}.profile: '{name}' is a profile for driver "
                            f"'{found.profile.driver}', not '{device['driver']}'")
        else:
            try:
                device = apply(found.profile, device)
            except ValueError as exc:
                problems.append(f"{where}.{exc}")
        resolved.append(device)
    return {**data, "devices": resolved}, problems


_POINT_PATH = re.compile(r"^(devices\[\d+\]\.)(\w+)\[(\d+)\]")


def relocate(problems: list[str], entry: dict[str, Any], merged: dict[str, Any]) -> list[str]:
    """Error paths into a merged point list, renumbered as the user's entry has them.

    A point the entry overrides or adds gets its index in the entry's own `points:`; a point
    that comes from the profile alone is named, since the user's file has no index for it.
    """
    out = []
    for line in problems:
        match = _POINT_PATH.match(line)
        key = match.group(2) if match else None
        merged_items = merged.get(key) if key else None
        if match is None or not isinstance(merged_items, list):
            out.append(line)
            continue
        position = int(match.group(3))
        item = merged_items[position] if position < len(merged_items) else None
        name = item.get("name") if isinstance(item, dict) else None
        given = entry.get(key) if key else None
        own = given if isinstance(given, list) else []
        mine = [i for i, p in enumerate(own) if isinstance(p, dict) and p.get("name") == name]
        if mine:
            path = f"{match.group(1)}{key}[{mine[0]}]"
        else:
            path = f"{match.group(1)}{key}[{name!r} of profile {entry.get('profile')!r}]"
        out.append(path + line[match.end():])
    return out
