#!/usr/bin/env python3
"""Where the agent's memory goes on the peer rig's workload (docs/performance.md).

Runs the rig's pieces in a private network namespace (as ../shared/peer-bench does): a
Mosquitto, the rig's pymodbus simulator (sim_modbus.py, unit ids 1..D, R registers) and this
checkout's agent with the rig's config (D units x R registers every P ms, durable buffer on).
After T seconds it prints the agent's RSS once a second, /proc/<pid>/status (VmHWM, RssAnon,
RssFile, Threads), smaps_rollup and the largest mappings. With --trace the agent runs under
tracemalloc (which makes it several times larger and slower: only the shares mean anything)
and a snapshot taken --snapshot-at seconds after the start is written, by line and by file,
to <out>/trace.txt.

    python3 bench/memory_rig.py -D 247 -T 30
    python3 bench/memory_rig.py -D 247 -T 70 --trace --snapshot-at 45

Needs the rig's simulator venv (/tmp/peers-venv, made by run_edge_agent.sh on its first run)
and `unshare -n` (root, or an unprivileged user namespace).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
RIG = Path(os.environ.get("PEER_BENCH", CHECKOUT.parent.parent / "shared" / "peer-bench"))
if not RIG.is_dir():
    RIG = Path("/work/shared/peer-bench")
SIM_PYTHON = os.environ.get("PEERS_VENV", "/tmp/peers-venv") + "/bin/python"
MQTT_PORT, MODBUS_PORT = 18830, 5020

TRACED = textwrap.dedent("""
    import sys, threading, time, tracemalloc
    tracemalloc.start(int(sys.argv[3]))
    def dump(delay=float(sys.argv[1]), out=sys.argv[2]):
        time.sleep(delay)
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        current, peak = tracemalloc.get_traced_memory()
        with open(out, "w") as f:
            f.write(f"traced {current / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB)\\n")
            for kind in ("lineno", "filename"):
                f.write(f"== by {kind}\\n")
                for s in snap.statistics(kind)[:50]:
                    frame = s.traceback[0]
                    f.write(f"{s.size / 1024:9.1f} KiB {s.count:7d} "
                            f"{frame.filename}:{frame.lineno}\\n")
    threading.Thread(target=dump, daemon=True).start()
    sys.argv = ["edge-agent"] + sys.argv[4:]
    from edge_agent.cli import main
    sys.exit(main())
""")


def config(units: int, registers: int, poll_ms: int, out: Path) -> Path:
    """The rig's config (run_edge_agent.sh writes the same)."""
    lines = ["mqtt:", f"  url: mqtt://127.0.0.1:{MQTT_PORT}", "  qos: 1", "  topic_prefix: edge",
             "buffer:", f"  path: {out}/buffer.sqlite3",
             "http:", "  listen: 127.0.0.1:17070", "devices:"]
    for unit in range(1, units + 1):
        lines += [f"  - name: plc{unit}", "    driver: modbus",
                  f"    port: tcp://127.0.0.1:{MODBUS_PORT}", f"    unit: {unit}",
                  f"    interval: {poll_ms / 1000}", "    points:",
                  "      - {name: ts_ms, table: holding, address: 0, type: uint64, order: ABCD}"]
        lines += [f"      - {{name: r{a}, table: holding, address: {a}, type: uint16}}"
                  for a in range(4, registers)]
    path = out / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def largest_mappings(pid: int, count: int = 15) -> list[tuple[int, str]]:
    maps: list[list] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):
            maps.append([0, " ".join(parts[5:]) or "[anonymous]"])
        elif parts and parts[0] == "Rss:":
            maps[-1][0] = int(parts[1])
    return sorted(((rss, name) for rss, name in maps), reverse=True)[:count]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-D", type=int, default=247, help="units (default 247)")
    ap.add_argument("-R", type=int, default=50, help="registers per unit (default 50)")
    ap.add_argument("-P", type=int, default=1000, help="poll interval, ms (default 1000)")
    ap.add_argument("-T", type=float, default=30, help="seconds the agent runs (default 30)")
    ap.add_argument("--trace", action="store_true", help="run the agent under tracemalloc")
    ap.add_argument("--snapshot-at", type=float, default=45.0, help="with --trace: seconds")
    ap.add_argument("--frames", type=int, default=6, help="with --trace: traceback depth")
    ap.add_argument("--out", default="/tmp/memory-rig", help="working directory")
    args = ap.parse_args()
    if os.environ.get("MEMORY_RIG_NETNS") != "1":  # into a private network namespace first
        script = 'ip link set lo up && exec "$@"'
        env = {**os.environ, "MEMORY_RIG_NETNS": "1"}
        return subprocess.call(["unshare", "-n", "--", "bash", "-c", script, "netns",
                                sys.executable, *sys.argv], env=env)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "mosquitto.conf").write_text(
        f"listener {MQTT_PORT} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nset_tcp_nodelay true\n")
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], log: str, **kw) -> subprocess.Popen:
        with open(out / log, "w") as sink:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **kw)
        procs.append(proc)
        return proc

    try:
        start(["mosquitto", "-c", str(out / "mosquitto.conf")], "mosquitto.log")
        wait_port(MQTT_PORT)
        start([SIM_PYTHON, str(RIG / "sim_modbus.py"), "--port", str(MODBUS_PORT),
               "-D", str(args.D), "-R", str(args.R)], "sim.log")
        wait_port(MODBUS_PORT)
        conf = config(args.D, args.R, args.P, out)
        python = CHECKOUT / ".venv" / "bin" / "python"
        argv = [str(CHECKOUT / ".venv" / "bin" / "edge-agent"), "run", "-c", str(conf)]
        if args.trace:
            (out / "traced.py").write_text(TRACED)
            argv = [str(python), str(out / "traced.py"), str(args.snapshot_at),
                    str(out / "trace.txt"), str(args.frames), "run", "-c", str(conf)]
        agent = start(argv, "agent.log", cwd=out, env={**os.environ, "NODE_NAME": "bench-node"})
        samples = []
        started = time.monotonic()
        while time.monotonic() - started < args.T:
            time.sleep(1)
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited ({agent.returncode}): see {out}/agent.log")
            samples.append(int(status(agent.pid)["VmRSS"].split()[0]) / 1024)
        print(f"D={args.D} R={args.R} P={args.P} ms, {args.T:g} s"
              + (" (under tracemalloc)" if args.trace else ""))
        print("RSS each second, MiB:", " ".join(f"{s:.1f}" for s in samples))
        fields = status(agent.pid)
        print("  ".join(f"{k} {fields[k]}" for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile",
                                                        "Threads")))
        print(Path(f"/proc/{agent.pid}/smaps_rollup").read_text().split("\n", 1)[1]
              .split("Pss_Shmem")[0].rstrip())
        print("largest mappings (Rss KiB):")
        for rss, name in largest_mappings(agent.pid):
            print(f"  {rss:8d} {name}")
        if args.trace:
            trace = out / "trace.txt"
            print(trace.read_text() if trace.exists() else "no snapshot yet: raise -T")
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
