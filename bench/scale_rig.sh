#!/usr/bin/env bash
# The scale curve on the shared peer rig: this checkout's agent (durable buffer on) at several
# fleet sizes, N runs each, interleaved (each round runs every size once).
# usage: bench/scale_rig.sh [-N 3] [-R 50] [-P 1000] [-T 30] [-W 10] [sizes...]   (default 1 10 100 247)
# Prints per run and, per size, the range over runs of: CPU us per reading, delivered share,
# latency p99 (read to subscriber), peak RSS, and the simulator's request rate.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RIG="${PEER_BENCH:-$HERE/../../shared/peer-bench}"
N=3; R=50; P=1000; T=30; W=10; SIZES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -N) N="$2"; shift 2;; -R) R="$2"; shift 2;; -P) P="$2"; shift 2;;
    -T) T="$2"; shift 2;; -W) W="$2"; shift 2;; -h|--help) sed -n '2,6p' "$0"; exit 0;;
    *) SIZES+=("$1"); shift;;
  esac
done
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(1 10 100 247)  # the simulator serves unit ids 1..247
OUT="/tmp/peers-runs/scale-$(date +%Y%m%d-%H%M%S).jsonl"
mkdir -p /tmp/peers-runs
cd "$HERE/.."
for i in $(seq 1 "$N"); do
  for d in "${SIZES[@]}"; do
    bash "$RIG/run_edge_agent.sh" -D "$d" -R "$R" -P "$P" -T "$T" -W "$W" \
      --label "scale-D$d-$i" --results "$OUT" >/dev/null 2>&1 || true
  done
done
python3 - "$OUT" "$R" "$P" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    if "error" in r:
        print(r["label"], "ERROR", r["error"])
rows = [r for r in rows if "error" not in r]
figs = {
    "CPU us/reading": lambda r: 1e6 * r["cpu_s"] / r["readings"],
    "delivered": lambda r: r["readings"] / r["expected_readings"],
    "p99 ms": lambda r: r["latency_ms"]["p99"],
    "RSS MiB": lambda r: r["rss_peak_mib"],
    "sim req/s": lambda r: r.get("sim_requests_per_s") or 0.0,
    "host busy %": lambda r: r["host_cpu_busy_pct"],
}
print(f"R={sys.argv[2]} registers, every {sys.argv[3]} ms, durable buffer on; range over runs")
print(f"{'units':>6} {'readings/s':>11} " + " ".join(f"{k:>17}" for k in figs))
for d in sorted({r["config"]["devices"] for r in rows}):
    sel = [r for r in rows if r["config"]["devices"] == d]
    rate = sum(r["readings_per_s"] for r in sel) / len(sel)
    cells = []
    for f in figs.values():
        vals = [f(r) for r in sel]
        cells.append(f"{min(vals):8.3g}-{max(vals):<8.3g}")
    print(f"{d:>6} {rate:>11.0f} " + " ".join(f"{c:>17}" for c in cells))
print(f"results: {sys.argv[1]}")
PYEOF
