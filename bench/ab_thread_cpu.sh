#!/usr/bin/env bash
# Idle CPU of two checkouts, alternated: bench/thread_cpu_rig.sh from each, N rounds.
# usage: bench/ab_thread_cpu.sh -A /path/to/checkout -B /path/to/checkout [-N 4] [-S 40]
#                               [thread_cpu_rig.sh workload args: -D 1 -R 10 -P 1000]
# Each checkout needs its own .venv (./scripts/bootstrap) and runs its own
# bench/thread_cpu_rig.sh (perf stat on the agent's threads; the rig's near-idle workload by
# default). Prints each run's CPU in ms a second and context switches, then the medians, B/A.
# Finer than the rig's meter at idle (10 ms of CPU a tick): use it for what one change did.
set -euo pipefail
N=4; S=40; A=""; B=""; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -A) A="$2"; shift 2;; -B) B="$2"; shift 2;; -N) N="$2"; shift 2;; -S) S="$2"; shift 2;;
    -h|--help) sed -n '2,8p' "$0"; exit 0;;
    *) EXTRA+=("$1"); shift;;
  esac
done
[[ -f "$A/bench/thread_cpu_rig.sh" && -f "$B/bench/thread_cpu_rig.sh" ]] \
  || { echo "give -A and -B checkouts that have bench/thread_cpu_rig.sh" >&2; exit 2; }
LOG="$(mktemp /tmp/ab-thread-cpu-XXXXXX.txt)"
for round in $(seq 1 "$N"); do
  for side in A B; do
    dir="$A"; [[ "$side" == B ]] && dir="$B"
    out="$(bash "$dir/bench/thread_cpu_rig.sh" -S "$S" "${EXTRA[@]}" 2>&1)"
    ms="$(sed -n 's/^all threads .*(\([0-9.]*\) ms\/s)$/\1/p' <<<"$out")"
    switches="$(awk '/^thread /{n += $(NF-2)} END {print n}' <<<"$out")"
    [[ -n "$ms" ]] || { echo "round $round $side: no figure; output:" >&2; echo "$out" >&2; exit 1; }
    echo "round $round $side: $ms ms/s, $switches context switches in $S s" | tee -a "$LOG"
  done
done
python3 - "$LOG" <<'PYEOF'
import re, statistics, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    side, ms = re.match(r"round \d+ (\w): ([0-9.]+)", line).groups()
    runs[side].append(float(ms))
a, b = statistics.median(runs["A"]), statistics.median(runs["B"])
print(f"A median {a:.3f} ms/s ({min(runs['A']):.3f}-{max(runs['A']):.3f})")
print(f"B median {b:.3f} ms/s ({min(runs['B']):.3f}-{max(runs['B']):.3f})")
print(f"B/A {b / a:.2f}")
PYEOF
