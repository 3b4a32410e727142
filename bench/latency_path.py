"""Where a reading's latency goes on the peer rig, segment by segment.

The rig's meter sees one figure per sample: the simulator's timestamp (registers 0-3, whole
milliseconds, so about 0.5 ms of the first segment is truncation) to the subscriber's
arrival. Run as the agent (`agent` sub-command, what bench/latency_path_rig.sh does), this
script wraps four of the agent's own methods to note the wall-clock time of each step of
every poll, and writes the notes at exit:

- `rx`: the Modbus TCP answer reaches the link (`TcpLink.data_received`), with the
  simulator's timestamp read from the answer's first four registers;
- `dl`: the poll's readings reach delivery (`Delivery.deliver`), normalised;
- `fs` / `fc`: the flush starts (`Delivery.flush`) / the durable outbox's commit returns
  (`SqliteOutbox.flush`);
- `tx`: the flush's PUBLISHes go to the socket (`LeanClient._write`).

`analyze` then joins them with the rig's `samples.csv` (the arrival of each sample) and prints,
per segment, p50/p90/p99 over the samples, the mean of each segment over the slowest 2 %,
and how many polls each flush carried. The wrappers cost a few microseconds a poll; compare
runs made with this tool with each other, not with the rig's plain figures.

    bench/latency_path_rig.sh [-D 10] [-R 50] [-P 100] [-T 30]
"""

from __future__ import annotations

import atexit
import collections
import csv
import json
import os
import statistics
import sys
import time
from typing import Any


def install(out: str) -> None:
    """Wraps the agent's steps so each appends (step, wall time, detail) to a list."""
    from edge_agent import delivery
    from edge_agent.buffer import SqliteOutbox
    from edge_agent.transport import lean_paho
    from edge_agent_drivers.modbus import transport

    notes: list[tuple[str, float, Any]] = []
    now, note = time.time, notes.append

    received = transport.TcpLink.data_received

    def data_received(self: Any, data: bytes) -> None:
        if len(data) >= 17:  # MBAP (7) + function and byte count (2) + the u64 timestamp
            note(("rx", now(), int.from_bytes(data[9:17], "big")))
        received(self, data)

    deliver = delivery.Delivery.deliver

    def delivered(self: Any, device: str, readings: list[Any], ts_ms: int) -> None:
        note(("dl", now(), device))
        deliver(self, device, readings, ts_ms)

    flush = delivery.Delivery.flush

    def flushed(self: Any) -> None:
        note(("fs", now(), 0))
        flush(self)

    commit = SqliteOutbox.flush

    def committed(self: Any) -> None:
        commit(self)
        note(("fc", now(), 0))

    write = lean_paho.LeanClient._write

    def written(self: Any, packets: list[Any], data: bytes) -> Any:
        note(("tx", now(), len(packets)))
        return write(self, packets, data)

    transport.TcpLink.data_received = data_received  # type: ignore[method-assign]
    delivery.Delivery.deliver = delivered  # type: ignore[method-assign]
    delivery.Delivery.flush = flushed  # type: ignore[method-assign]
    SqliteOutbox.flush = committed  # type: ignore[method-assign]
    lean_paho.LeanClient._write = written  # type: ignore[method-assign]

    @atexit.register
    def dump() -> None:
        with open(out, "w") as f:
            json.dump(notes, f)


SEGMENTS = ("answer served -> received", "received -> delivered", "delivered -> flush",
            "commit", "commit -> send", "send -> subscriber", "total")


def analyze(notes_path: str, run_dir: str) -> None:
    with open(notes_path) as f:
        notes = json.load(f)
    arrivals = {}
    with open(os.path.join(run_dir, "samples.csv")) as f:
        for row in csv.DictReader(f):
            device = row["topic"].split("/")[2]
            arrivals[(device, int(row["ts_ms"]))] = float(row["arrival_ms"]) / 1000
    segments: dict[str, list[float]] = {name: [] for name in SEGMENTS}
    samples: list[list[float]] = []
    answers: collections.deque[tuple[int, float]] = collections.deque()
    held: list[tuple[int, float, str, float]] = []  # delivered, not yet flushed
    flushing: list[tuple[int, float, str, float]] = []
    batches: collections.Counter[int] = collections.Counter()
    gaps: list[float] = []  # between consecutive deliveries of one round of polls
    lone_waits: list[float] = []  # delivery to flush, of flushes that carried one poll
    flush_start = commit_end = last_delivery = 0.0
    for step, at, detail in notes:
        if step == "rx":
            answers.append((detail, at))
        elif step == "dl" and answers:  # one poll, one answer, in order (one block a poll)
            served, received = answers.popleft()
            held.append((served, received, detail, at))
            if at - last_delivery < 0.02:  # longer: the next round of polls
                gaps.append(at - last_delivery)
            last_delivery = at
        elif step == "fs":
            batches[len(held)] += 1
            if len(held) == 1:
                lone_waits.append(at - held[0][3])
            flushing, held, flush_start = held, [], at
        elif step == "fc":
            commit_end = at
        elif step == "tx" and flushing:
            for served, received, device, delivered in flushing:
                arrival = arrivals.get((device, served))
                if arrival is None:
                    continue  # outside the meter's window
                parts = [received - served / 1000, delivered - received, flush_start - delivered,
                         commit_end - flush_start, at - commit_end, arrival - at,
                         arrival - served / 1000]
                samples.append(parts)
                for name, value in zip(SEGMENTS, parts, strict=True):
                    segments[name].append(value)
            flushing = []
    print(f"{len(samples)} samples; ms, p50 / p90 / p99, and the mean over the slowest 2 %")
    slowest = sorted(samples, key=lambda parts: parts[-1])[int(len(samples) * 0.98):]
    for i, name in enumerate(SEGMENTS):
        values = sorted(segments[name])
        if not values:
            continue
        tail = statistics.mean(parts[i] for parts in slowest) if slowest else 0.0
        print(f"  {name:28s} {_ms(values, 0.5):7.3f} {_ms(values, 0.9):7.3f} "
              f"{_ms(values, 0.99):7.3f}   {tail * 1000:7.3f}")
    polls = sum(size * count for size, count in batches.items())
    print(f"flushes {sum(batches.values())} for {polls} polls; polls per flush: "
          + ", ".join(f"{size}: {count}" for size, count in sorted(batches.items())))
    for what, values in (("between one poll's delivery and the next", gaps),
                         ("waited by the flushes that carried one poll", lone_waits)):
        values.sort()
        if values:
            print(f"ms {what}, p10 / p50 / p90: {_ms(values, 0.1):.3f} {_ms(values, 0.5):.3f} "
                  f"{_ms(values, 0.9):.3f}")


def _ms(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


if __name__ == "__main__":
    if sys.argv[1:2] == ["agent"]:
        install(os.environ.get("LATENCY_PATH_OUT", "latency-path.json"))
        from edge_agent.cli import main

        sys.exit(main(sys.argv[2:]))
    if sys.argv[1:2] == ["analyze"] and len(sys.argv) == 4:
        analyze(sys.argv[2], sys.argv[3])
        sys.exit(0)
    print(__doc__, file=sys.stderr)
    sys.exit(2)
