"""The node's identity, and what may be a level of an MQTT topic.

The node name comes from env NODE_NAME (the downward API's spec.nodeName), else config
`node`, else the host name. It becomes a topic level, the MQTT client id and the Sparkplug
edge node id, so it is checked once at start-up: a name MQTT cannot carry (a control
character, bytes that are not UTF-8, more than `MAX_NODE_BYTES`) would otherwise make the
broker drop the connection on every attempt, forever. Such a name is a ConfigError (exit 2).

`/ + #` are replaced by `_` in the topic level (the contract), which is not injective: `a/b`,
`a+b` and `a#b` all publish under `a_b`. The MQTT client id is where sharing a name does harm
(one agent's connection takes over the other's session, and both flap), so the client id uses
an injective form: a name that needed a replacement gets a suffix `~` plus one letter per `_`
of the result saying what it was: `u` an original `_`, `s` a `/`, `p` a `+`, `h` a `#`
(`a/b` -> `edge-agent-a_b~s`, `a+b` -> `edge-agent-a_b~p`). `~` is reserved for this suffix (a
raw name containing it is refused; no host or Kubernetes node name can contain one), so
distinct names never share a client id. Two such agents still share topics; the node conflict
detection reports that (docs/deploy.md).
"""

from __future__ import annotations

import os
import re
import socket
import unicodedata

from edge_agent.errors import ConfigError

#: Kubernetes node names are DNS subdomains of at most 253 characters; far below MQTT's
#: 65,535-byte topic and client id limits, with room for prefix, device and metric levels
MAX_NODE_BYTES = 253
#: a topic prefix of several levels; MQTT's limit is for the whole topic (65,535 bytes)
MAX_PREFIX_BYTES = 1024
#: one Sparkplug id (group, host) or other single topic level taken from config
MAX_LEVEL_BYTES = 255

_FORBIDDEN = re.compile(r"[/+#]")
_ESCAPE_LETTER = {"_": "u", "/": "s", "+": "p", "#": "h"}
_UNDERSCORE_LIKE = re.compile(r"[_/+#]")
#: Unicode categories a name must not contain: controls, invisible format characters, lone
#: surrogates (what bytes that are not UTF-8 become in os.environ), line/paragraph separators
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def topic_safe(name: str) -> str:
    """The node name as a topic level: `/ + #` become `_` (the contract)."""
    return _FORBIDDEN.sub("_", name)


def injective_safe(name: str) -> str:
    """`/ + #` replaced, with a suffix that keeps distinct names distinct (see module doc)."""
    if not _FORBIDDEN.search(name):
        return name
    letters = "".join(_ESCAPE_LETTER[c] for c in _UNDERSCORE_LIKE.findall(name))
    return f"{_FORBIDDEN.sub('_', name)}~{letters}"


def text_problem(text: str, max_bytes: int) -> str | None:
    """Why `text` cannot be carried in an MQTT topic or client id, or None."""
    if not text:
        return "is empty"
    for char in text:
        if unicodedata.category(char) in _UNPRINTABLE:
            if "\udc80" <= char <= "\udcff":
                return f"is not UTF-8 (byte 0x{ord(char) - 0xDC00:02x})"
            return f"contains the control or invisible character U+{ord(char):04X}"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return f"is {size} bytes long; the limit is {max_bytes}"
    if text != text.strip():
        return "starts or ends with white space"
    return None


def check_node_name(name: str) -> str:
    """Raises ValueError if `name` cannot name this node; returns it otherwise."""
    problem = text_problem(name, MAX_NODE_BYTES)
    if problem is None and "~" in name:
        problem = "contains '~', which is reserved for the escape of / + # in names"
    if problem is not None:
        raise ValueError(f"the node name {_shown(name)} {problem}")
    return name


def check_level(text: str, what: str = "a topic level") -> str:
    """Raises ValueError unless `text` can be one level of a topic (also a Sparkplug id)."""
    problem = text_problem(text, MAX_LEVEL_BYTES)
    if problem is None and _FORBIDDEN.search(text):
        problem = "contains / + or #, which MQTT reserves"
    if problem is not None:
        raise ValueError(f"{what} {_shown(text)} {problem}")
    return text


def check_prefix(prefix: str, allow_dollar: bool = False) -> str:
    """Raises ValueError unless `prefix` can lead every topic the agent publishes.

    A leading `$` makes brokers treat the topics as their own (`$SYS/...`): publishing there
    is silently dropped by most, so it is refused unless explicitly allowed.
    """
    problem = text_problem(prefix, MAX_PREFIX_BYTES)
    if problem is None:
        levels = prefix.split("/")
        if any(c in prefix for c in "+#"):
            problem = "contains + or #, the subscription wildcards"
        elif "" in levels:
            problem = "has an empty level (a leading, trailing or double /)"
        elif prefix.startswith("$") and not allow_dollar:
            problem = ("starts with $, which brokers reserve for their own topics "
                       "($SYS); set mqtt.allow_dollar_prefix: true if yours allows it")
    if problem is not None:
        raise ValueError(f"the topic prefix {_shown(prefix)} {problem}")
    return prefix


def _shown(text: str, limit: int = 40) -> str:
    """A name as an error message shows it: escaped, and cut if long."""
    shown = ascii(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def raw_node_name(configured: str | None) -> str:
    """The node name as given, checked; raises ConfigError naming its source."""
    env = os.environ.get("NODE_NAME")
    if env:
        name, source = env, "NODE_NAME"
    elif configured:
        name, source = configured, "node"
    else:
        name, source = socket.gethostname(), "the host name"
    try:
        return check_node_name(name)
    except ValueError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None


def node_name(configured: str | None) -> str:
    """The node name as a topic level (and Sparkplug edge node id)."""
    return topic_safe(raw_node_name(configured))


def client_id(configured: str | None) -> str:
    """The MQTT client id: `edge-agent-<node>`, distinct for distinct node names."""
    return f"edge-agent-{injective_safe(raw_node_name(configured))}"
