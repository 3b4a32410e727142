"""Telemetry `seq` numbers that outlive the buffer file they are written to.

The buffer's `seqs` table holds each device's last seq exactly, in the same transaction as
the messages that use it, so a restart continues without a gap. But a buffer file can be
lost (deleted, corrupt and moved aside, replaced), and starting again at 1 would hand a
subscriber seq numbers it has already seen for other readings. So seq numbers are also
*reserved* in a small state file beside the buffer (`<buffer>.seq.json`), in blocks of
RESERVE_BLOCK per device: the file is written (durably) once per block, not per message,
and records each device's block as (base, reserved), the first seq of the block and the
last one it allows.

On start the buffer's seq is trusted when the buffer is the one the state file was
written with (same `generation`), has reached the current block (seq >= base - 1), and the
machine did not go down under it (`edge_agent.store.boot`: its last commits may be missing).
Every known device gets its next block in the one write at start, so a hundred devices do
not cost a hundred fsyncs on their first messages.
Otherwise numbers up to `reserved` may have been used: the device continues after
`reserved`, the jump is logged (`seq_resumed_after_reservation`) and counted in `skipped`
(at most one block per device: what a subscriber may see as a gap of lost messages).
"""

from __future__ import annotations

from typing import Any

from edge_agent.store.statefile import StateFile

#: seq numbers reserved per device and state-file write
RESERVE_BLOCK = 1000
FORMAT = 1


class SeqAllocator:
    """Hands out each device's next seq; reserves blocks in `state` when it has one."""

    def __init__(self, state: StateFile | None = None, log: Any = None) -> None:
        self.state = state
        self.log = log
        self.current: dict[str, int] = {}
        self.dirty: dict[str, int] = {}  # changed since the buffer last stored them
        self.generation: str | None = None  # the buffer these seqs are written to
        self.skipped = 0  # seq numbers jumped over at start (a buffer lost its seqs)
        self._blocks: dict[str, tuple[int, int]] = {}  # device -> (base, reserved)
        self._limit: dict[str, int] = {}  # device -> reserved (the hot path's check)

    @property
    def degraded(self) -> str | None:
        return self.state.degraded if self.state is not None else None

    def next(self, device: str) -> int:
        seq = self.current.get(device, 0) + 1
        self.current[device] = seq
        self.dirty[device] = seq
        if self.state is not None and seq > self._limit.get(device, 0):
            self._reserve(device, seq)
        return seq

    def _reserve(self, device: str, seq: int) -> None:
        self._blocks[device] = (seq, seq + RESERVE_BLOCK - 1)
        self._limit[device] = seq + RESERVE_BLOCK - 1
        self._save()

    def _save(self) -> None:
        if self.state is not None:
            self.state.save({"format": FORMAT, "generation": self.generation,
                             "devices": {d: list(b) for d, b in self._blocks.items()}})

    def resume(self, stored: dict[str, int], generation: str | None,
               trusted: bool = True) -> None:
        """Starts from the buffer's seqs (`stored`, from the buffer `generation`), or after
        the reservations where the buffer cannot be trusted (another buffer, or `trusted`
        False: the machine went down under it, so its last commits may be missing); then
        pairs the state with it."""
        body = self.state.load() if self.state is not None else None
        devices = body.get("devices") if isinstance(body, dict) else None
        same_buffer = isinstance(body, dict) and body.get("generation") == generation
        blocks: dict[str, tuple[int, int]] = {}
        if isinstance(devices, dict):
            for device, block in devices.items():
                if (isinstance(block, list) and len(block) == 2
                        and all(isinstance(n, int) for n in block)):
                    blocks[str(device)] = (block[0], block[1])
        current = dict(stored)
        for device, (base, reserved) in blocks.items():
            last = stored.get(device, 0)
            if trusted and same_buffer and generation is not None and last >= base - 1:
                continue
            current[device] = max(last, reserved)
            gap = reserved - base + 1
            self.skipped += gap
            if self.log is not None:
                self.log.warning("seq_resumed_after_reservation", device=device,
                                 buffer_seq=last, resumed_after=current[device],
                                 gap_at_most=gap, same_buffer=same_buffer,
                                 machine_restarted=not trusted)
        self.current.update(current)
        self.dirty.update(current)
        for device, last in current.items():  # one write for every known device's block
            if device not in blocks or last >= blocks[device][1]:
                blocks[device] = (last + 1, last + RESERVE_BLOCK)
        self._blocks.update(blocks)
        self._limit.update({d: b[1] for d, b in blocks.items()})
        self.generation = generation
        self._save()

    def rebind(self, generation: str | None) -> None:
        """The seqs now go to a new buffer file: it gets every current seq."""
        self.generation = generation
        self.dirty.update(self.current)
        self._save()
