#!/usr/bin/env bash
# CPU time of each of the agent's threads on the shared peer rig (perf stat, per thread).
# usage: bench/thread_cpu_rig.sh [-S seconds] [-D 1] [-R 10] [-P 1000] [--memory]
# Runs ../shared/peer-bench/run_edge_agent.sh (this checkout's .venv/bin/edge-agent, durable
# buffer on) with the given workload (default: the rig's near-idle one), waits until the
# agent has run 8 s, then counts each thread's task-clock and context switches for S seconds
# (default 30) with `perf stat --per-thread`. Prints each thread's name (Python names them
# after the process, so they are told apart by what they do: the event loop is the lowest
# id), its milliseconds of CPU and its context switches, then the rig's own result line.
# Needs perf (linux-tools) and permission to attach to the agent (root, or
# kernel.perf_event_paranoid <= 1).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RIG="${PEER_BENCH:-$HERE/../../shared/peer-bench}"
S=30; D=1; R=10; P=1000; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -S) S="$2"; shift 2;; -D) D="$2"; shift 2;; -R) R="$2"; shift 2;; -P) P="$2"; shift 2;;
    --memory) EXTRA+=(--memory); shift;;
    -h|--help) sed -n '2,11p' "$0"; exit 0;;
    *) echo "unknown argument: $1" >&2; exit 2;;
  esac
done
command -v perf >/dev/null || { echo "perf not found" >&2; exit 1; }
OUT="/tmp/thread-cpu-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
cd "$HERE/.."
bash "$RIG/run_edge_agent.sh" -D "$D" -R "$R" -P "$P" -T $((S + 12)) -W 5 --label thread-cpu \
  --results "$OUT/results.jsonl" "${EXTRA[@]}" >"$OUT/rig.log" 2>&1 &
RIG_PID=$!
AGENT=""
for _ in $(seq 1 120); do
  AGENT="$(pgrep -n -f '^[^ ]*python[^ ]* [^ ]*/edge-agent run -c /tmp/peers-runs/thread-cpu-' || true)"
  [[ -n "$AGENT" ]] && break
  sleep 0.5
done
[[ -n "$AGENT" ]] || { echo "agent did not start; see $OUT/rig.log" >&2; exit 1; }
sleep 8  # connected and publishing, past start-up
TIDS="$(ls "/proc/$AGENT/task" | paste -sd,)"
perf stat --per-thread -e task-clock,context-switches -t "$TIDS" -- sleep "$S" 2>"$OUT/perf.txt"
wait "$RIG_PID" || true
python3 - "$OUT/perf.txt" "$OUT/results.jsonl" "$S" <<'PYEOF'
import json, re, sys
perf, results, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
threads = {}
for line in open(perf):
    m = re.match(r"\s*(\S+)-(\d+)\s+([\d,.]+)\s+(msec task-clock|context-switches)", line)
    if m:
        entry = threads.setdefault(int(m.group(2)), {"name": m.group(1)})
        value = float(m.group(3).replace(",", ""))
        entry["ms" if "task-clock" in m.group(4) else "switches"] = value
total = 0.0
for tid in sorted(threads):
    t = threads[tid]
    if "ms" not in t:
        continue  # not scheduled in the window
    total += t["ms"]
    print(f"thread {tid:>7}  {t['ms']:8.2f} ms CPU ({t['ms'] / seconds:.3f} ms/s)"
          f"  {int(t.get('switches', 0)):6d} context switches")
print(f"all threads   {total:8.2f} ms CPU in {seconds:g} s ({total / seconds:.3f} ms/s)")
line = open(results).read().strip().splitlines()[-1]
r = json.loads(line)
print("rig:", {k: r.get(k) for k in ("cpu_s", "cpu_pct_of_one_core", "readings", "rss_peak_mib")},
      "p99 ms", r.get("latency_ms", {}).get("p99"))
PYEOF
echo "output: $OUT"
