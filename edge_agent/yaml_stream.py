"""A YAML document built straight from the parser's events, its limits checked on the way.

PyYAML's loaders compose the whole document into a node graph before building any Python
object, and `edge_agent.config_source` checks that graph (aliases, size, depth) before
constructing. A node costs about 0.5 KiB (the node, its attribute dict, two marks), so a
760 KiB config of 247 devices x 47 points became 37 MiB of nodes, plus 15 MiB for the walk
that checked them: a transient larger than everything the agent keeps for those devices, and
one that left the heap fragmented for good (docs/performance.md, "Where the memory goes").

`build` consumes the libyaml event stream instead and keeps only what the result needs: each
value is made as its events arrive, by PyYAML's own resolver and SafeConstructor (one
scalar node at a time), and the same limits as `config_source.check_graph` are enforced
while the document is read: an alias to an anchor that is still open (a cycle), the size
of the document with its aliases expanded, and its depth. Merge keys (`<<`) are applied
as SafeConstructor applies them. A collection with an explicit tag other than the plain
map and seq (`!!set`, `!!omap`, a local tag) raises `NeedsGraph`: the caller composes that
rare document the classic way.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"
VALUE_TAG = "tag:yaml.org,2002:value"

#: marks a merge key (`<<`) waiting for its value
_MERGE = object()


class NeedsGraph(Exception):
    """The document has a collection only the composing loader builds (an explicit tag)."""


class LimitExceeded(Exception):
    """The document breaks a limit; `problem` says which (without the file's name)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _Open:
    """A sequence or mapping whose end event has not arrived yet."""

    __slots__ = ("anchor", "height", "items", "key", "mapping", "mark", "merges", "size")

    def __init__(self, mapping: bool, anchor: str | None, mark: Any) -> None:
        self.mapping, self.anchor, self.mark = mapping, anchor, mark
        self.items: list[Any] = []  # a sequence's values, or a mapping's (key, value) pairs
        self.merges: list[tuple[Any, Any]] = []  # pairs merged in by `<<` keys
        self.key: Any = None  # a mapping's key waiting for its value
        self.size, self.height = 1, 1


def build(loader: Any, max_nodes: int, max_depth: int) -> Any:
    """The single document `loader` (a CSafeLoader or SafeLoader) holds, or None if none.

    Raises LimitExceeded, NeedsGraph, or PyYAML's errors for what PyYAML refuses.
    """
    loader.get_event()  # StreamStartEvent
    if loader.check_event(yaml.StreamEndEvent):
        return None
    document = loader.get_event()  # DocumentStartEvent
    result = _Builder(loader, max_nodes, max_depth).node()
    loader.get_event()  # DocumentEndEvent
    if not loader.check_event(yaml.StreamEndEvent):
        raise ComposerError("expected a single document in the stream", document.start_mark,
                            "but found another document", loader.get_event().start_mark)
    return result


class _Builder:
    def __init__(self, loader: Any, max_nodes: int, max_depth: int) -> None:
        self.loader = loader
        self.max_nodes, self.max_depth = max_nodes, max_depth
        #: anchor -> (value, expanded size, height); open ones -> their start mark
        self.anchors: dict[str, tuple[Any, int, int]] = {}
        self.open_anchors: dict[str, Any] = {}
        self.marks: dict[str, Any] = {}  # anchor -> where it was defined (duplicates)

    def node(self) -> Any:
        """Reads one whole node (the document's root) and returns its value."""
        loader = self.loader
        stack: list[_Open] = []
        get_event: Callable[[], Any] = loader.get_event
        while True:
            event = get_event()
            kind = event.__class__
            anchor = None
            if kind is yaml.ScalarEvent:
                anchor = self._anchor(event)
                value, size, height = self._scalar(event, stack[-1] if stack else None), 1, 1
            elif kind is yaml.AliasEvent:
                value, size, height = self._alias(event)
            elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
                mapping = kind is yaml.MappingStartEvent
                tag = event.tag
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.MappingNode if mapping else yaml.SequenceNode,
                                         None, event.implicit)
                if tag != (MAP_TAG if mapping else SEQ_TAG):
                    raise NeedsGraph(tag)
                if len(stack) > self.max_depth:
                    raise LimitExceeded(f"line {event.start_mark.line + 1}: nested more than "
                                        f"{self.max_depth} levels deep")
                opened = _Open(mapping, self._anchor(event), event.start_mark)
                if opened.anchor is not None:
                    self.open_anchors[opened.anchor] = event.start_mark
                stack.append(opened)
                continue
            else:  # SequenceEndEvent, MappingEndEvent
                done = stack.pop()
                value = _mapping(done) if done.mapping else done.items
                size, height, anchor = done.size, done.height, done.anchor
                if anchor is not None:
                    del self.open_anchors[anchor]
                if size > self.max_nodes:
                    raise LimitExceeded(f"more than {self.max_nodes} YAML nodes once aliases "
                                        "are expanded (an alias bomb?)")
                if height > self.max_depth:
                    raise LimitExceeded(f"line {done.mark.line + 1}: nested more than "
                                        f"{self.max_depth} levels deep")
            if anchor is not None:
                self.anchors[anchor] = (value, size, height)
            if not stack:
                if size > self.max_nodes:
                    raise LimitExceeded(f"more than {self.max_nodes} YAML nodes once aliases "
                                        "are expanded (an alias bomb?)")
                return value
            parent = stack[-1]
            parent.size += size
            if height >= parent.height:
                parent.height = height + 1
            if not parent.mapping:
                parent.items.append(value)
            elif parent.key is None:
                parent.key = (value, event.start_mark)
            else:
                _add_pair(parent, value, event.start_mark)

    def _anchor(self, event: Any) -> str | None:
        anchor = event.anchor
        if anchor is not None:
            if anchor in self.marks:
                raise ComposerError(f"found duplicate anchor {anchor!r}; first occurrence",
                                    self.marks[anchor], "second occurrence", event.start_mark)
            self.marks[anchor] = event.start_mark
        return anchor

    def _alias(self, event: Any) -> tuple[Any, int, int]:
        anchor = event.anchor
        if anchor in self.open_anchors:
            raise LimitExceeded(f"line {self.open_anchors[anchor].line + 1}: an alias refers "
                                "to an anchor that contains it (a cycle)")
        if anchor not in self.anchors:
            raise ComposerError(None, None, f"found undefined alias {anchor!r}",
                                event.start_mark)
        return self.anchors[anchor]

    def _scalar(self, event: Any, parent: _Open | None) -> Any:
        loader = self.loader
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if parent is not None and parent.mapping and parent.key is None:
            if tag == MERGE_TAG:
                return _MERGE
            if tag == VALUE_TAG:  # the `=` key is a plain string, as SafeConstructor has it
                tag = STR_TAG
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark,
                               style=event.style)
        try:
            return loader.construct_object(node, deep=True)
        finally:
            loader.constructed_objects.clear()


def _add_pair(parent: _Open, value: Any, value_mark: Any) -> None:
    key, key_mark = parent.key
    parent.key = None
    if key is _MERGE:  # as SafeConstructor.flatten_mapping: later mappings give way
        if isinstance(value, dict):
            parent.merges.extend(value.items())
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for merged in reversed(value):
                parent.merges.extend(merged.items())
        else:
            raise ConstructorError("while constructing a mapping", parent.mark,
                                   "expected a mapping or list of mappings for merging, but "
                                   f"found {type(value).__name__}", value_mark)
        return
    if not isinstance(key, Hashable):
        raise ConstructorError("while constructing a mapping", parent.mark,
                               "found unhashable key", key_mark)
    parent.items.append((key, value))


def _mapping(done: _Open) -> dict[Any, Any]:
    if done.merges:
        return dict(done.merges + done.items)
    return dict(done.items)
