"""Per-round figures of a `compare.sh` results file (edge-agent against Node-RED) or of a
`bench/ab_rig.sh` one (build A against build B).

`compare.sh` prints medians, and CPU-s per 1000 readings to three places only; this reads the
JSON lines it wrote (its last line names the file) and prints, for each side, the range and
median over rounds of CPU per reading (µs, from `cpu_s / readings`), share of the core,
delivered share, p50 and p99 latency, peak RSS and host load, then the ratio per round.

usage: python3 bench/rig_rounds.py /tmp/peers-runs/compare-<date>.jsonl
       python3 bench/rig_rounds.py /tmp/peers-runs/ab-<date>.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from typing import Any


def us_per_reading(run: dict[str, Any]) -> float:
    return run["cpu_s"] / run["readings"] * 1e6 if run["readings"] else float("nan")


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return (f"{fmt.format(min(values))}-{fmt.format(max(values))} "
            f"(median {fmt.format(statistics.median(values))})")


FIGURES: list[tuple[str, Callable[[dict[str, Any]], float], str]] = [
    ("CPU us per reading", us_per_reading, "{:.2f}"),
    ("CPU % of a core", lambda r: r["cpu_pct_of_one_core"], "{:.2f}"),
    ("delivered share", lambda r: r["readings"] / r["expected_readings"], "{:.4f}"),
    ("latency p50 ms", lambda r: r["latency_ms"]["p50"], "{:.2f}"),
    ("latency p99 ms", lambda r: r["latency_ms"]["p99"], "{:.2f}"),
    ("peak RSS MiB", lambda r: r["rss_peak_mib"], "{:.1f}"),
    ("host CPU busy %", lambda r: r["host_cpu_busy_pct"], "{:.0f}"),
]


def main(path: str) -> None:
    with open(path) as lines:
        runs = [json.loads(line) for line in lines if line.strip()]
    if any(str(r.get("label", "")).startswith("ab-") for r in runs):  # ab_rig.sh's sides
        sides = [(side, [r for r in runs if str(r.get("label", "")).startswith(f"ab-{side}-")])
                 for side in ("A", "B")]
        over, under = 1, 0  # a change: B against A
    else:
        sides = [("edge-agent", [r for r in runs if r.get("sut") != "node-red"]),
                 ("Node-RED", [r for r in runs if r.get("sut") == "node-red"])]
        over, under = 0, 1
    rounds = min(len(side_runs) for _, side_runs in sides)  # a file still being written
    sides = [(name, side_runs[:rounds]) for name, side_runs in sides]
    (first, first_runs), (second, second_runs) = sides
    for name, figure, fmt in FIGURES:
        print(f"{name:20} {first} {spread([figure(r) for r in first_runs], fmt):28} "
              f"{second} {spread([figure(r) for r in second_runs], fmt)}")
    (top, top_runs), (bottom, bottom_runs) = sides[over], sides[under]
    ratios = [round(us_per_reading(a) / us_per_reading(b), 3)
              for a, b in zip(top_runs, bottom_runs, strict=True)]
    print(f"CPU per reading, {top} / {bottom}, per round:", ratios)
    medians = statistics.median(map(us_per_reading, top_runs)) / statistics.median(
        map(us_per_reading, bottom_runs))
    print(f"ratio of the medians: {medians:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
