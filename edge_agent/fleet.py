"""Fleets: one config for every node of a DaemonSet, each node running its own devices.

Two ways to say which node runs a device, usable together:

- `nodes: [edge-a, "line-3-*"]` on a device: glob patterns on the node name (no `nodes:`
  runs it everywhere);
- a config *directory*: `config.yaml` (shared settings and devices) plus one file per node
  holding that node's `devices:`, named `nodes/<node>.yaml` or, because a ConfigMap key
  cannot contain `/`, `nodes__<node>.yaml` (node names never contain `__`).

A node's config is the shared file with its device list cut down to the devices whose
patterns match the node, then the node's own file's devices appended. Everything the core
validates is validated on that merged config, so port conflicts are checked per node (two
nodes may well use the same port name); problems are mapped back to the file and the
index the user wrote (`nodes/edge-a.yaml: devices[0].unit: ...`).

The agent reads only the shared file and its own node's file, so a broken file of another
node never stops it; `edge-agent check-config` reads them all.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import config as config_mod
from edge_agent.config import AgentConfig, DeviceConfig
from edge_agent.errors import ConfigError
from edge_agent.identity import check_node_name, topic_safe
from edge_agent.reload import paths_signature

SHARED_FILE = "config.yaml"
NODE_DIR = "nodes"
FLAT_PREFIX = "nodes__"
NODE_FILE_KEYS = frozenset({"devices"})
_GLOB_CHARS = re.compile(r"[*?\[]")
_DEVICE_PATH = re.compile(r"^devices\[(\d+)\]")


@dataclass
class ConfigFile:
    """One file of a fleet config: where it is, how problems name it, what it holds."""

    path: Path
    label: str  # as problems name it: relative to the config directory
    data: dict[str, Any]


@dataclass
class FleetFiles:
    """The files of a config: the shared one and the per-node ones that were read."""

    root: Path
    shared: ConfigFile
    nodes: dict[str, ConfigFile] = field(default_factory=dict)
    #: problems found while reading (bad YAML, unknown files, a node file twice)
    problems: list[str] = field(default_factory=list)

    @property
    def is_directory(self) -> bool:
        return self.root.is_dir()


@dataclass
class NodeConfig:
    """What one node runs: the validated config and where each of its devices came from."""

    node: str
    config: AgentConfig
    origins: list[tuple[str, int]]  # per device: (file label, index in that file)
    hash: str
    #: the files' signature taken before they were read: the config watcher's baseline, so
    #: a change between loading and watching is not missed (edge_agent.reload)
    signature: tuple[Any, ...] | None = None


# -- matching ----------------------------------------------------------------------------
def runs_on(patterns: list[str] | None, node: str) -> bool:
    """True if a device with these `nodes:` patterns runs on `node` (None: every node)."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(node, pattern) for pattern in patterns)


def for_node(config: AgentConfig, node: str) -> AgentConfig:
    """The config with only `node`'s devices (a config that was not loaded through this
    module, e.g. built in a test, may still carry other nodes' devices)."""
    mine = [device for device in config.devices if runs_on(device.nodes, node)]
    if len(mine) == len(config.devices):
        return config
    return config.model_copy(update={"devices": mine})


def config_hash(data: Any) -> str:
    """A short, stable hash of a node's config as its files give it (environment overrides
    excluded, so `check-config --node` on any machine prints what the node reports)."""
    if isinstance(data, AgentConfig):
        data = data.model_dump(mode="json", exclude_unset=True)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- reading files -----------------------------------------------------------------------
def node_file_paths(root: Path, node: str) -> list[Path]:
    """The two places a node's own file may be (directory layout or flat ConfigMap keys)."""
    return [root / NODE_DIR / f"{node}.yaml", root / f"{FLAT_PREFIX}{node}.yaml"]


def signature(root: Path, node: str) -> tuple[Any, ...] | None:
    """What changes when a file that makes up `node`'s config is replaced (see
    edge_agent.reload.ConfigWatcher)."""
    return paths_signature(watched_paths(root, node))


def watched_paths(root: Path, node: str) -> list[Path]:
    """The files whose change changes what `node` runs."""
    if not root.is_dir():
        return [root]
    return [root / SHARED_FILE, *node_file_paths(root, node)]


def ignored_node_files(path: Path) -> list[Path]:
    """Per-node files beside a config *file*: `-c .../config.yaml` reads none of them (a
    fleet ConfigMap run with the file's path instead of its directory's)."""
    if path.is_dir() or path.name != SHARED_FILE:
        return []
    root = path.parent
    found = sorted(root.glob(f"{FLAT_PREFIX}*.yaml"))
    if (root / NODE_DIR).is_dir():
        found += sorted((root / NODE_DIR).glob("*.yaml"))
    return found


def read(root: Path, node: str | None = None, *, every_node: bool = False) -> FleetFiles:
    """Reads a config file or directory: the shared file, and of the per-node files either
    `node`'s (the agent), all of them (`every_node`: check-config) or none."""
    if not root.is_dir():
        return FleetFiles(root, ConfigFile(root, "", config_mod.read_yaml(root)))
    shared_path = root / SHARED_FILE
    if not shared_path.exists():
        raise ConfigError([f"{root}: no {SHARED_FILE} in this directory (a config directory "
                           f"holds {SHARED_FILE} and {NODE_DIR}/<node>.yaml files)"])
    problems: list[str] = []
    shared = _read(root, shared_path, problems)
    if shared is None:
        raise ConfigError(problems)
    files = FleetFiles(root, shared, problems=problems)
    if every_node:
        candidates = _all_node_files(root, problems)
    else:
        candidates = node_file_paths(root, node) if node is not None else []
    for path in candidates:
        if not path.exists():
            continue
        name = _node_of(path)
        loaded = _read(root, path, problems)
        if loaded is None:
            continue
        other = files.nodes.get(name)
        if other is not None:
            problems.append(f"{loaded.label}: node '{name}' also has {other.label}; keep "
                            f"one file per node")
            continue
        files.nodes[name] = loaded
    return files


def _all_node_files(root: Path, problems: list[str]) -> list[Path]:
    """Every per-node file; a YAML file that fits no name is a problem (a typo such as
    `node__edge-a.yaml` must not silently leave a node without its devices)."""
    found: list[Path] = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.name == SHARED_FILE:
            continue  # a ConfigMap volume's ..data and timestamped folders
        if path.name.startswith(FLAT_PREFIX) and path.name.endswith(".yaml"):
            found.append(path)
        elif path.suffix in (".yaml", ".yml"):
            problems.append(f"{path.name}: not a file of a config directory (expected "
                            f"{SHARED_FILE}, {NODE_DIR}/<node>.yaml or "
                            f"{FLAT_PREFIX}<node>.yaml)")
    folder = root / NODE_DIR
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix == ".yaml":
                found.append(path)
            elif path.suffix == ".yml":
                problems.append(f"{NODE_DIR}/{path.name}: per-node files end in .yaml")
    return found


def _node_of(path: Path) -> str:
    name = path.name.removesuffix(".yaml")
    return name.removeprefix(FLAT_PREFIX) if path.parent.name != NODE_DIR else name


def _read(root: Path, path: Path, problems: list[str]) -> ConfigFile | None:
    label = str(path.relative_to(root))
    try:
        data = config_mod.read_yaml(path)
    except ConfigError as exc:
        # read_yaml names the full path; the label is what the user sees in the directory
        problems.extend(line.replace(str(path), label, 1) for line in exc.problems)
        return None
    return ConfigFile(path, label, data)


# -- checking the shape a fleet needs before anything is merged --------------------------
def _structure_problems(files: FleetFiles) -> list[str]:
    problems = list(files.problems)
    shared = files.shared
    for index, device in _devices(shared):
        if isinstance(device, dict) and "nodes" in device:
            problems.extend(_pattern_problems(shared, index, device["nodes"]))
    for node, node_file in sorted(files.nodes.items()):
        if topic_safe(node) != node or not node:
            problems.append(f"{node_file.label}: '{node}' is not a node name (no / + #)")
        for key in node_file.data:
            if key not in NODE_FILE_KEYS:
                problems.append(f"{node_file.label}: {key}: a per-node file holds `devices:` "
                                f"only; shared settings belong in {SHARED_FILE}")
        devices = node_file.data.get("devices")
        if devices is not None and not isinstance(devices, list):
            problems.append(f"{node_file.label}: devices: must be a list of devices")
            continue
        shared_names = {device.get("name"): index for index, device in _devices(shared)
                        if isinstance(device, dict) and _raw_runs_on(device, node)}
        for index, device in _devices(node_file):
            if not isinstance(device, dict):
                continue
            if "nodes" in device:
                problems.append(f"{node_file.label}: devices[{index}].nodes: not used in a "
                                f"per-node file (the file's name names the node)")
            name = device.get("name")
            if name in shared_names:
                problems.append(
                    f"{node_file.label}: devices[{index}].name: device '{name}' is defined "
                    f"twice for node '{node}': in {shared.label or SHARED_FILE} "
                    f"(devices[{shared_names[name]}]) and in {node_file.label} "
                    f"(devices[{index}])")
    return problems


def _pattern_problems(source: ConfigFile, index: int, patterns: Any) -> list[str]:
    where = _prefix(source) + f"devices[{index}].nodes"
    if patterns is None:
        return []
    if not isinstance(patterns, list):
        return [f"{where}: must be a list of node name patterns, e.g. [edge-a, \"line-3-*\"]"]
    if not patterns:
        return [f"{where}: an empty list runs the device on no node (use `enabled: false`)"]
    return [f"{where}[{position}]: {pattern!r} is not a string (a node name or a glob "
            f"pattern like \"line-3-*\"; quote it in YAML)"
            for position, pattern in enumerate(patterns) if not isinstance(pattern, str)]


def _devices(source: ConfigFile) -> list[tuple[int, Any]]:
    devices = source.data.get("devices")
    return list(enumerate(devices)) if isinstance(devices, list) else []


def _raw_runs_on(device: dict[str, Any], node: str) -> bool:
    patterns = device.get("nodes")
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        return True  # malformed: reported as such; kept so its other problems show too
    return runs_on(patterns, node)


def _prefix(source: ConfigFile) -> str:
    return f"{source.label}: " if source.label else ""


# -- merging and validating one node's config --------------------------------------------
def _merged(files: FleetFiles, node: str | None) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The node's raw config and each device's origin. `node` None: a node that no
    pattern and no file names (it runs the devices without `nodes:`)."""
    data = {key: value for key, value in files.shared.data.items() if key != "devices"}
    devices: list[Any] = []
    origins: list[tuple[str, int]] = []
    for index, device in _devices(files.shared):
        if not isinstance(device, dict):
            runs = True  # kept, so validation reports what is wrong with it
        elif node is None:
            runs = device.get("nodes") is None
        else:
            runs = _raw_runs_on(device, node)
        if runs:
            devices.append(device)
            origins.append((files.shared.label, index))
    own = files.nodes.get(node) if node is not None else None
    if own is not None:
        for index, device in _devices(own):
            devices.append(device)
            origins.append((own.label, index))
    # an explicit `devices:` (in the shared file or the node's) is what tells a reload that
    # a node left with no device means it (edge_agent.config_source.reload_refusal)
    if devices or "devices" in files.shared.data or (own is not None and "devices" in own.data):
        data["devices"] = devices
    return data, origins


def _remap(problems: list[str], origins: list[tuple[str, int]], shared_label: str) -> list[str]:
    """Turns the merged list's `devices[k]` back into the file and index the user wrote."""
    mapped = []
    for line in problems:
        match = _DEVICE_PATH.match(line)
        if match and int(match.group(1)) < len(origins):
            label, index = origins[int(match.group(1))]
            rest = line[match.end():]
            mapped.append(f"{label}: devices[{index}]{rest}" if label
                          else f"devices[{index}]{rest}")
        elif shared_label and not line.startswith(config_mod.ENV_PREFIX):
            mapped.append(f"{shared_label}: {line}")
        else:
            mapped.append(line)
    return mapped


def _validate(data: dict[str, Any], origins: list[tuple[str, int]], shared_label: str, *,
              strict_drivers: bool, environ: dict[str, str] | None) -> AgentConfig:
    try:
        return config_mod.validate(data, strict_drivers=strict_drivers, environ=environ)
    except ConfigError as exc:
        raise ConfigError(_remap(exc.problems, origins, shared_label)) from None


def node_for(files: FleetFiles, environ: dict[str, str] | None = None) -> str:
    """The node name the agent will use: env NODE_NAME, then config `node` (env
    EDGE_AGENT_NODE over the file's), then the host name, checked and made a topic level as
    `edge_agent.identity` does."""
    import socket

    environ = dict(os.environ) if environ is None else environ
    override = next((value for name, value in environ.items()
                     if name.upper() == f"{config_mod.ENV_PREFIX}NODE"), None)
    configured = override or files.shared.data.get("node")
    if environ.get("NODE_NAME"):
        name, source = environ["NODE_NAME"], "NODE_NAME"
    elif configured:
        name, source = str(configured), "node"
    else:
        name, source = socket.gethostname(), "the host name"
    try:
        return topic_safe(check_node_name(name))
    except ValueError as exc:  # named by its source, as edge_agent.identity does
        raise ConfigError([f"{source}: {exc}"]) from None


def load_node(root: Path, node: str | None = None, *, strict_drivers: bool = False,
              environ: dict[str, str] | None = None) -> NodeConfig:
    """What the agent runs: the shared config and this node's devices, validated.

    `node` defaults to the agent's own name (NODE_NAME, config `node`, host name).
    """
    if not root.is_dir():
        seen = signature(root, node or "")  # before reading: a change after it is noticed
        files = read(root)
        node = node or node_for(files, environ)
    else:
        node = node or node_for(read(root), environ)
        seen = signature(root, node)
        files = read(root, node)
    problems = _structure_problems(files)
    if problems:
        raise ConfigError(problems)
    data, origins = _merged(files, node)
    config = _validate(data, origins, files.shared.label, strict_drivers=strict_drivers,
                       environ=environ)
    return NodeConfig(node, config, origins, config_hash(_without_patterns(data)), seen)


def _without_patterns(data: dict[str, Any]) -> dict[str, Any]:
    """The node's config without `nodes:`: which *other* nodes run a device does not change
    what this one runs, so it does not change its hash."""
    devices = data.get("devices")
    if not isinstance(devices, list):
        return data
    return {**data, "devices": [
        {key: value for key, value in device.items() if key != "nodes"}
        if isinstance(device, dict) else device for device in devices]}


# -- check-config ------------------------------------------------------------------------
@dataclass
class FleetCheck:
    """The result of checking every node's part of a config."""

    files: FleetFiles
    nodes: list[str]  # the node names the config names (files and literal patterns)
    shared: AgentConfig  # the shared settings (validated on a node no pattern names)
    devices: list[DeviceConfig]  # every device, node files' ones with `nodes: [<node>]`


def check(root: Path, *, environ: dict[str, str] | None = None) -> FleetCheck:
    """Validates every node's part: each node a file or a literal pattern names, a node
    that none names, and every device scoped by glob patterns only. Raises ConfigError with
    every problem found."""
    files = read(root, every_node=True)
    problems = _structure_problems(files)
    if problems:
        raise ConfigError(problems)
    named = set(files.nodes)
    for _, device in _devices(files.shared):
        if isinstance(device, dict) and isinstance(device.get("nodes"), list):
            named.update(p for p in device["nodes"] if not _GLOB_CHARS.search(p))
    nodes = sorted(named)
    label = files.shared.label
    passes = [_merged(files, node) for node in [None, *nodes]]
    # devices scoped by glob patterns that no named node matches: each on its own
    covered = {origin for _, origins in passes for origin in origins}
    for index, device in _devices(files.shared):
        if (label, index) not in covered:
            data = {**files.shared.data, "devices": [device]}
            passes.append((data, [(label, index)]))
    validated: dict[tuple[str, int], DeviceConfig] = {}
    shared: AgentConfig | None = None
    for data, origins in passes:
        try:
            config = _validate(data, origins, label, strict_drivers=True, environ=environ)
        except ConfigError as exc:
            problems.extend(line for line in exc.problems if line not in problems)
            continue
        shared = shared or config
        validated.update(zip(origins, config.devices, strict=True))
    if problems or shared is None:
        raise ConfigError(problems or [f"{root}: no valid shared settings"])
    devices = [validated[(label, index)] for index, _ in _devices(files.shared)]
    for node, node_file in sorted(files.nodes.items()):
        for index, _ in _devices(node_file):
            devices.append(validated[(node_file.label, index)].model_copy(
                update={"nodes": [node]}))
    return FleetCheck(files, nodes, shared, devices)


def printable(config: AgentConfig, devices: list[DeviceConfig] | None = None) -> dict[str, Any]:
    """The config as check-config prints it: secrets redacted, `nodes:` only where set."""
    if devices is not None:
        config = config.model_copy(update={"devices": devices})
    data = config_mod.redacted(config)
    for device in data.get("devices", []):
        if device.get("nodes") is None:
            device.pop("nodes", None)
    return data
