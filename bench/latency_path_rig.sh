#!/usr/bin/env bash
# Where a reading's latency goes on the shared peer rig: bench/latency_path.py as the agent.
# usage: bench/latency_path_rig.sh [-D 10] [-R 50] [-P 100] [-T 30] [--memory]
# Runs ../shared/peer-bench/run_edge_agent.sh (this checkout's code, durable buffer on) with
# the agent wrapped by bench/latency_path.py, which notes the time of each step of every
# poll (answer received, readings delivered, flush, commit, send); then joins the notes with
# the rig's per-sample arrivals and prints each segment's p50/p90/p99, the slowest 2 %'s
# make-up and the polls per flush. Output in /tmp/latency-path-<date>/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RIG="${PEER_BENCH:-$HERE/../../shared/peer-bench}"
D=10; R=50; P=100; T=30; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -D) D="$2"; shift 2;; -R) R="$2"; shift 2;; -P) P="$2"; shift 2;; -T) T="$2"; shift 2;;
    --memory) EXTRA+=(--memory); shift;;
    -h|--help) sed -n '2,8p' "$0"; exit 0;;
    *) echo "unknown argument: $1" >&2; exit 2;;
  esac
done
OUT="/tmp/latency-path-$(date +%Y%m%d-%H%M%S)"
cd "$HERE/.."
# run_edge_agent.sh takes ./.venv/bin/edge-agent: a directory whose one is the wrapper
mkdir -p "$OUT/sut/.venv/bin"
printf '#!/bin/sh\nLATENCY_PATH_OUT=%q exec %q %q agent "$@"\n' "$OUT/notes.json" \
  "$PWD/.venv/bin/python" "$HERE/latency_path.py" >"$OUT/sut/.venv/bin/edge-agent"
chmod +x "$OUT/sut/.venv/bin/edge-agent"
(cd "$OUT/sut" && bash "$RIG/run_edge_agent.sh" -D "$D" -R "$R" -P "$P" -T "$T" -W 5 \
  --label latency-path --results "$OUT/results.jsonl" "${EXTRA[@]}" >"$OUT/rig.log" 2>&1) || true
RUN_DIR="$(python3 - "$OUT/results.jsonl" <<'PYEOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
lat = r["latency_ms"]
print(f"rig: p50 {lat['p50']} ms, p99 {lat['p99']} ms, {r['cpu_s'] / r['readings'] * 1e6:.2f} us "
      f"CPU a reading, host {r['host_cpu_busy_pct']:.1f} % busy", file=sys.stderr)
print(r["run_dir"])
PYEOF
)"
.venv/bin/python "$HERE/latency_path.py" analyze "$OUT/notes.json" "$RUN_DIR" | tee "$OUT/segments.txt"
echo "output: $OUT"
