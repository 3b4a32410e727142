"""Reading a config file safely: the one step every config byte passes before validation.

A config file crosses a trust boundary (a ConfigMap anyone with edit rights on the namespace
can change, a file an editor is half-way through saving), and it is read again on every hot
reload while the agent runs. So reading it must end in either data or a ConfigError naming
the file and the problem, never in another exception, and must cost bounded time and memory
whatever the file holds:

- size: at most `MAX_BYTES` (Kubernetes caps a ConfigMap at 1 MiB anyway);
- encoding: strict UTF-8 (a BOM is allowed); the error names the byte offset of the first
  byte that is not;
- YAML: the document is checked while it is read, before anything is expanded: an alias
  that refers to its own ancestor (a cycle) is refused, and the size the document has once
  its aliases are expanded (which is what validation and the env overlay walk) is capped at
  `MAX_NODES`, and its depth at `MAX_DEPTH`. A "billion laughs" alias bomb of 1 KiB is
  refused in microseconds instead of expanding to 10^8 items. The data is built from the
  parser's events (`edge_agent.yaml_stream`), not from a node graph of the whole file; a
  document with an explicitly tagged collection is composed and checked by `check_graph`;
- an empty file (or comments only) is reported as such (`Source.empty`), and a reload
  refuses what a non-atomic save leaves for a moment (`reload_refusal`).

Parsing is synchronous and CPU-bound; the runtime calls it in a worker thread when reloading
so the event loop keeps polling and answering /healthz.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_agent import yaml_stream
from edge_agent.errors import ConfigError

MAX_BYTES = 1 << 20
MAX_NODES = 1_000_000
MAX_DEPTH = 64

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Source:
    """A config file's data, and whether the file held nothing at all."""

    data: dict[str, Any]
    empty: bool


def read_config(path: Path) -> Source:
    """Reads, decodes and parses one config file; raises ConfigError naming `path`."""
    return parse(read_text(path), str(path))


def read_text(path: Path, limit: int = MAX_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > limit:
        raise ConfigError([f"{path}: larger than the limit of {limit} bytes"])
    return decode_text(raw, str(path))


def decode_text(raw: bytes, where: str) -> str:
    """Strict UTF-8 (a leading BOM dropped); the error names the first bad byte's offset."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        raise ConfigError([f"{where}: not UTF-8 text: byte 0x{raw[offset]:02x} at offset "
                           f"{offset} ({exc.reason})"]) from None


def parse(text: str, where: str) -> Source:
    """YAML text to a mapping, within the limits above; raises ConfigError naming `where`."""
    data = parse_value(text, where)
    if data is None:
        return Source({}, empty=True)
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: the top level must be a mapping, not "
                           f"{type(data).__name__}"])
    return Source(data, empty=False)


def parse_value(text: str, where: str) -> Any:
    """Any YAML document within the limits (also used for env values); None when empty."""
    if "\x00" in text:  # libyaml stops at a NUL without a word: a cut or binary file
        offset = len(text[:text.index("\x00")].encode())
        raise ConfigError([f"{where}: a NUL byte at offset {offset}: not a text file"])
    loader = _Loader(text)
    try:
        try:  # from the event stream: no node graph (see edge_agent.yaml_stream)
            return yaml_stream.build(loader, MAX_NODES, MAX_DEPTH)
        except yaml_stream.LimitExceeded as exc:
            raise ConfigError([f"{where}: {exc.problem}"]) from None
        except yaml_stream.NeedsGraph:  # an explicitly tagged collection: the classic way
            loader.dispose()
            loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        check_graph(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}:{at}: invalid YAML: {problem}"]) from None
    except RecursionError:
        raise ConfigError([f"{where}: nested too deeply"]) from None
    finally:
        loader.dispose()


def check_graph(root: yaml.Node, where: str, max_nodes: int = MAX_NODES,
                max_depth: int = MAX_DEPTH) -> int:
    """The node count of the document with every alias expanded; raises ConfigError past
    `max_nodes`, past `max_depth` levels, or on an alias inside its own anchor (a cycle).

    Aliases share node objects, so the expanded size is summed once per distinct node
    (memoised): linear in the file, however many times an anchor is repeated.
    """
    done: dict[int, tuple[int, int]] = {}  # node -> (expanded size, height)
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            below = [done[id(child)] for child in _children(node)]
            size = 1 + sum(size for size, _ in below)
            height = 1 + max((height for _, height in below), default=0)
            if size > max_nodes:
                raise ConfigError([f"{where}: more than {max_nodes} YAML nodes once aliases "
                                   "are expanded (an alias bomb?)"])
            if height > max_depth:
                raise ConfigError([f"{where}: line {node.start_mark.line + 1}: nested more "
                                   f"than {max_depth} levels deep"])
            done[key] = size, height
            continue
        if key in done:
            continue
        if key in on_path:
            raise ConfigError([f"{where}: line {node.start_mark.line + 1}: an alias refers "
                               "to an anchor that contains it (a cycle)"])
        if len(on_path) > max_depth:
            raise ConfigError([f"{where}: line {node.start_mark.line + 1}: nested more than "
                               f"{max_depth} levels deep"])
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    return done[id(root)][0]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []


def reload_refusal(running: Any, new: Any) -> str | None:
    """Why a reload must not be applied although the new config is valid, or None.

    `running` and `new` are AgentConfigs. An editor that truncates the file before writing
    it, or a swap caught half way, leaves an empty or cut file for a moment: valid YAML that
    would stop every device. A reload that stops every running device is applied only when
    the file says so with an explicit `devices:` key (`devices: []`, or every device
    `enabled: false`); `config.validate` leaves `devices` out of the fields set otherwise.
    """
    if not any(d.enabled for d in running.devices) or any(d.enabled for d in new.devices):
        return None
    if not new.model_fields_set:
        return "the file is empty (a save in progress?); it would stop every device"
    if "devices" not in new.model_fields_set:
        return ("the file has no `devices:` key (truncated?); it would stop every device; "
                "write `devices: []` to stop them all on purpose")
    return None
