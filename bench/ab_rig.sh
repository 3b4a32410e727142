#!/usr/bin/env bash
# Two edge-agent builds on the shared peer rig, interleaved N rounds: the before/after ratio
# of one change, measured the way ../shared/peer-bench/compare.sh measures against Node-RED.
# usage: bench/ab_rig.sh -A /path/to/edge-agent -B /path/to/edge-agent [-N 3] [-D 10] [-R 50]
#                        [-P 100] [-T 45] [-W 10] [extra run_edge_agent.sh args, e.g. --memory]
# A and B are edge-agent executables (a checkout's .venv/bin/edge-agent, or a wrapper script
# that sets an environment variable and execs one). Prints each round and the medians, B/A.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RIG="${PEER_BENCH:-$HERE/../../shared/peer-bench}"
N=3; D=10; R=50; P=100; T=45; W=10; A=""; B=""; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -A) A="$2"; shift 2;; -B) B="$2"; shift 2;; -N) N="$2"; shift 2;;
    -D) D="$2"; shift 2;; -R) R="$2"; shift 2;; -P) P="$2"; shift 2;;
    -T) T="$2"; shift 2;; -W) W="$2"; shift 2;; -h|--help) sed -n '2,7p' "$0"; exit 0;;
    *) EXTRA+=("$1"); shift;;
  esac
done
[[ -x "$A" && -x "$B" ]] || { echo "give -A and -B edge-agent executables" >&2; exit 2; }
A="$(realpath "$A")"; B="$(realpath "$B")"
OUT="/tmp/peers-runs/ab-$(date +%Y%m%d-%H%M%S).jsonl"
mkdir -p /tmp/peers-runs
# run_edge_agent.sh takes the agent from $EDGE_AGENT_BIN or ./.venv/bin/edge-agent; the
# variable would reach the agent too, whose config reads every EDGE_AGENT_* variable as a
# key, so each side gets a directory whose .venv/bin/edge-agent execs it
SIDES="$(mktemp -d /tmp/ab-rig-XXXXXX)"
for side in A B; do
  mkdir -p "$SIDES/$side/.venv/bin"
  bin="$A"; [[ "$side" == B ]] && bin="$B"
  printf '#!/bin/sh\nexec %q "$@"\n' "$bin" >"$SIDES/$side/.venv/bin/edge-agent"
  chmod +x "$SIDES/$side/.venv/bin/edge-agent"
done
for i in $(seq 1 "$N"); do
  for side in A B; do
    (cd "$SIDES/$side" && bash "$RIG/run_edge_agent.sh" -D "$D" -R "$R" -P "$P" -T "$T" \
      -W "$W" --label "ab-$side-$i" --results "$OUT" "${EXTRA[@]}" >/dev/null 2>&1) || true
  done
done
python3 - "$OUT" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    if "error" in r:
        print(r["label"], "ERROR", r["error"])
rows = [r for r in rows if "error" not in r]
figs = {
    "CPU us per reading": lambda r: 1e6 * r["cpu_s"] / r["readings"],
    "delivered share": lambda r: r["readings"] / r["expected_readings"],
    "latency p99 ms": lambda r: r["latency_ms"]["p99"],
    "peak RSS MiB": lambda r: r["rss_peak_mib"],
    "host CPU busy %": lambda r: r["host_cpu_busy_pct"],
}
side = lambda r: r["label"].split("-")[1]
for r in rows:
    print(r["label"], {k: round(f(r), 4) for k, f in figs.items()})
print(f"{'median of ' + str(len(rows) // 2) + ' rounds':28} {'A':>11} {'B':>11} {'B/A':>7}")
for name, f in figs.items():
    a = statistics.median(f(r) for r in rows if side(r) == "A")
    b = statistics.median(f(r) for r in rows if side(r) == "B")
    print(f"{name:28} {a:11.4f} {b:11.4f} {b / a:7.2f}")
print(f"results: {sys.argv[1]}")
PYEOF
