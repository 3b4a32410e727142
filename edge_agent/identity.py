"""The node's identity: env NODE_NAME (the downward API's spec.nodeName), config, host name."""

from __future__ import annotations

import os
import re
import socket

_FORBIDDEN = re.compile(r"[/+#]")


def topic_safe(name: str) -> str:
    """Replaces the characters MQTT forbids inside one topic level."""
    return _FORBIDDEN.sub("_", name)


def node_name(configured: str | None) -> str:
    return topic_safe(os.environ.get("NODE_NAME") or configured or socket.gethostname())


def client_id(node: str) -> str:
    return f"edge-agent-{node}"
