"""Third-party-style drivers that misbehave, for the core's supervision tests.

Registered through an entry point exactly like an installed driver package (see
`register` below and tests/test_supervision.py); each counts what the core did to it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from edge_agent.sdk import BlockingDriver, Driver, Reading, Sample, now_ms

DRIVERS = {
    "test-hanging-poll": "HangingPoll",
    "test-silent-stream": "SilentStream",
    "test-ending-stream": "EndingStream",
    "test-unencodable": "Unencodable",
    "test-burst": "BurstStream",
    "test-crashing": "Crashing",
    "test-stuck-thread": "StuckThread",
}

#: set to let StuckThread's blocked threads go (a test's teardown)
RELEASE = threading.Event()


def register(site: Path) -> Path:
    """Writes an installed distribution whose entry points name the drivers below."""
    info = site / "supervision_test_drivers-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: supervision-test-drivers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edge_agent.drivers]\n" + "".join(
        f"{name} = tests.supervision_drivers:{cls}\n" for name, cls in DRIVERS.items()))
    return site


class Counting(Driver):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1


class HangingPoll(Counting):
    """Answers the first poll after each connect, then hangs for ever (ignoring `timeout`)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.polls_since_connect = 0
        self.hangs = 0

    async def connect(self) -> None:
        await super().connect()
        self.polls_since_connect = 0

    async def poll(self) -> Sample:
        self.polls_since_connect += 1
        if self.polls_since_connect > 1:
            self.hangs += 1
            await asyncio.get_running_loop().create_future()  # never done
        return Sample(now_ms(), [Reading("value", self.connects)])


class SilentStream(Counting):
    """Streams two samples after each connect, then falls silent without failing."""

    streaming = True

    async def stream(self) -> AsyncIterator[Sample]:
        for n in range(2):
            yield Sample(now_ms(), [Reading("value", n)])
        await asyncio.get_running_loop().create_future()


class EndingStream(Counting):
    """Streams two samples after each connect, then the iterator simply ends."""

    streaming = True

    async def stream(self) -> AsyncIterator[Sample]:
        for n in range(2):
            yield Sample(now_ms(), [Reading("value", n)])


class Unencodable(Counting):
    """Every third poll carries a value no output can encode: the core's failure to publish."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.polls = 0

    async def poll(self) -> Sample:
        self.polls += 1
        value = object() if self.polls % 3 == 0 else self.polls
        return Sample(now_ms(), [Reading("value", value)])


class BurstStream(Counting):
    """Streams `burst` samples as fast as it can once, then stays connected and silent."""

    streaming = True

    async def stream(self) -> AsyncIterator[Sample]:
        if self.connects == 1:
            for n in range(int(getattr(self.config, "burst", 5000))):
                yield Sample(now_ms(), [Reading("value", n), Reading(f"only_{n % 7}", n)])
        await asyncio.get_running_loop().create_future()


class Crashing(Counting):
    """Fails in every way that used to print raw tracebacks: its poll raises a bug, it leaves
    a task to die unobserved, a loop callback and a thread of its own raise."""

    async def poll(self) -> Sample:
        loop = asyncio.get_running_loop()

        async def orphan() -> None:
            raise ValueError("an orphaned task failed")

        loop.create_task(orphan())  # noqa: RUF006  # dropped on purpose: reported when collected
        loop.call_soon(_raise, "a loop callback failed")
        threading.Thread(target=_raise, args=("a driver thread failed",), daemon=True).start()
        raise RuntimeError("a bug in the driver's poll")


def _raise(message: str) -> None:
    raise KeyError(message)


class StuckThread(BlockingDriver):
    """A driver on a blocking library whose read never returns: its one thread stays stuck,
    so after the core cuts the poll, its close and connect queue behind it as well."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.connects = 0
        self.polls = 0

    async def connect(self) -> None:
        await self.in_thread(self._open)

    def _open(self) -> None:
        self.connects += 1

    async def close(self) -> None:
        await self.in_thread(lambda: None)

    async def poll(self) -> Sample:
        self.polls += 1
        await self.in_thread(RELEASE.wait)
        return Sample(now_ms(), [Reading("value", self.polls)])
