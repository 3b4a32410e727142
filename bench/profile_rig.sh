#!/usr/bin/env bash
# Profile the agent under the shared peer rig's load with py-spy (sampling, no code change).
# usage: bench/profile_rig.sh [-D 10] [-R 50] [-P 100] [-S seconds] [--memory] [--py-spy PATH]
#        bench/profile_rig.sh --cprofile [-D 10] [-R 50] [-P 100] [-S seconds]
# Runs ../shared/peer-bench/run_edge_agent.sh (this checkout's .venv/bin/edge-agent, durable
# buffer on) with a long window, attaches py-spy to the agent for S seconds once it is
# publishing, and leaves in /tmp/perf-profile-<date>/: profile.txt (collapsed stacks),
# profile.svg (flame graph) and top.txt (self and total time per function, via
# bench/profile_top.py). py-spy is not a project dependency: pass --py-spy or put it on PATH
# (e.g. `python3 -m venv /tmp/tools && /tmp/tools/bin/pip install py-spy`).
# --cprofile instead runs the agent under bench/cprofile_agent.py (cProfile on the main
# thread's CPU clock, from start to stop) and prints the top functions by own and total time.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RIG="${PEER_BENCH:-$HERE/../../shared/peer-bench}"
D=10; R=50; P=100; S=30; EXTRA=(); PYSPY="$(command -v py-spy || true)"; CPROFILE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -D) D="$2"; shift 2;; -R) R="$2"; shift 2;; -P) P="$2"; shift 2;; -S) S="$2"; shift 2;;
    --py-spy) PYSPY="$2"; shift 2;; --memory) EXTRA+=(--memory); shift;;
    --cprofile) CPROFILE=1; shift;;
    -h|--help) sed -n '2,9p' "$0"; exit 0;;
    *) echo "unknown argument: $1" >&2; exit 2;;
  esac
done
OUT="/tmp/perf-profile-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
cd "$HERE/.."
if [[ "$CPROFILE" == 1 ]]; then
  # run_edge_agent.sh takes ./.venv/bin/edge-agent: a directory whose one is the profiler
  mkdir -p "$OUT/sut/.venv/bin"
  printf '#!/bin/sh\nPERF_PROFILE_OUT=%q exec %q %q "$@"\n' "$OUT/agent.prof" \
    "$PWD/.venv/bin/python" "$HERE/cprofile_agent.py" >"$OUT/sut/.venv/bin/edge-agent"
  chmod +x "$OUT/sut/.venv/bin/edge-agent"
  (cd "$OUT/sut" && bash "$RIG/run_edge_agent.sh" -D "$D" -R "$R" -P "$P" -T "$S" -W 5 \
    --label profile --results "$OUT/results.jsonl" "${EXTRA[@]}" >"$OUT/rig.log" 2>&1) || true
  .venv/bin/python - "$OUT/agent.prof" <<'PYEOF' | tee "$OUT/top.txt"
import pstats, sys
stats = pstats.Stats(sys.argv[1])
stats.sort_stats("tottime").print_stats(30)
stats.sort_stats("cumtime").print_stats(40)
PYEOF
  echo "profile: $OUT"
  exit 0
fi
[[ -x "$PYSPY" ]] || { echo "py-spy not found (--py-spy PATH)" >&2; exit 1; }
bash "$RIG/run_edge_agent.sh" -D "$D" -R "$R" -P "$P" -T $((S + 20)) -W 5 --label "profile" \
  --results "$OUT/results.jsonl" "${EXTRA[@]}" >"$OUT/rig.log" 2>&1 &
RIG_PID=$!
# the agent: the edge-agent process whose config is in the rig's run dir for this label
AGENT=""
for _ in $(seq 1 120); do
  AGENT="$(pgrep -n -f '^[^ ]*python[^ ]* [^ ]*/edge-agent run -c /tmp/peers-runs/profile-' || true)"
  [[ -n "$AGENT" ]] && break
  sleep 0.5
done
[[ -n "$AGENT" ]] || { echo "agent did not start; see $OUT/rig.log" >&2; exit 1; }
sleep 10  # connected and publishing, past start-up
"$PYSPY" record --pid "$AGENT" --duration "$S" --rate 250 --format raw -o "$OUT/profile.txt" \
  >"$OUT/py-spy.log" 2>&1
"$PYSPY" record --pid "$AGENT" --duration 10 --rate 250 -o "$OUT/profile.svg" \
  >>"$OUT/py-spy.log" 2>&1 || true
wait "$RIG_PID" || true
"$HERE/../.venv/bin/python" "$HERE/profile_top.py" "$OUT/profile.txt" >"$OUT/top.txt"
cat "$OUT/top.txt"
echo "profile: $OUT"
