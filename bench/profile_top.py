"""Summarise a py-spy collapsed-stack profile: where the agent's CPU goes, by area and function.

usage: python bench/profile_top.py profile.txt [--top 25]

py-spy's raw format is one line per distinct stack, `frame;frame;...;leaf count`, each frame
`function (path:line)`. On this VM py-spy's idle detection lets waiting threads through (the
event loop in epoll, the checkpoint thread and the HTTP server waiting), so stacks whose leaf
is a wait (IDLE_LEAVES) are dropped and the rest are CPU time. "self" is time in the function
itself, "total" includes what it called; "area" sums self time by the library or module the
leaf frame is in.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^:()]*)(?::\d+)?\)$")

#: (substring of the frame's file path, area name), first match wins
AREAS = [
    ("pymodbus/", "pymodbus"),
    ("paho/", "paho-mqtt"),
    ("edge_agent_drivers/modbus/", "edge_agent modbus driver"),
    ("edge_agent/buffer", "edge_agent outbox/buffer"),
    ("edge_agent/outbox", "edge_agent outbox/buffer"),
    ("edge_agent/mqtt", "edge_agent mqtt"),
    ("edge_agent/normalize", "edge_agent normalize"),
    ("edge_agent/topics", "edge_agent topics/payload"),
    ("edge_agent/runtime", "edge_agent runtime"),
    ("edge_agent/", "edge_agent other"),
    ("asyncio/selector_events", "asyncio transports"),
    ("asyncio/base_events", "asyncio loop"),
    ("asyncio/events", "asyncio loop"),
    ("asyncio/", "asyncio other"),
    ("selectors", "selectors (epoll)"),
    ("threading", "threads"),
    ("sqlite3", "sqlite3"),
    ("structlog", "structlog"),
    ("prometheus_client", "prometheus_client"),
]


#: leaf functions that are a thread waiting, not working
IDLE_LEAVES = {("select", "selectors.py"), ("wait", "threading.py"),
               ("_worker", "thread.py"), ("serve_forever", "socketserver.py")}


def area_of(path: str) -> str:
    for needle, name in AREAS:
        if needle in path:
            return name
    return path.rsplit("/", 1)[-1] or "?"


def parse(path: str) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            body, _, count = line.rpartition(" ")
            frames = []
            for raw in body.split(";"):
                m = _FRAME.match(raw)
                frames.append((m["func"], m["path"]) if m else (raw, ""))
            stacks.append((frames, int(count)))
    return stacks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    stacks = parse(args.profile)
    everything = sum(c for _, c in stacks)
    stacks = [(frames, count) for frames, count in stacks
              if (frames[-1][0].rsplit(".", 1)[-1], frames[-1][1].rsplit("/", 1)[-1])
              not in IDLE_LEAVES]
    total = sum(c for _, c in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, count in stacks:
        names = [f"{func} ({path.rsplit('/', 2)[-2:] and '/'.join(path.rsplit('/', 2)[-2:])})"
                 for func, path in frames]
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
        areas[area_of(frames[-1][1])] += count
    print(f"samples: {total} working of {everything} ({everything - total} waiting, dropped)")
    print("\nself time by area")
    for name, count in areas.most_common():
        print(f"  {100 * count / total:5.1f} %  {name}")
    print(f"\ntop {args.top} functions by self time")
    for name, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f} %  {name}")
    print(f"\ntop {args.top} functions by total time (self + callees)")
    for name, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
