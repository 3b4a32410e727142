"""Once-per-episode logging: a fault that repeats is one line when it starts and one when
it ends, with the count in between, never a line per message."""

from __future__ import annotations

from typing import Any

#: a drop episode ends once the buffer is back below this share of max_bytes
DROP_EPISODE_END = 0.9


class DropEpisodes:
    """Logs buffer overflow once per episode instead of once per dropped message.

    An episode starts with the first drop and ends when acknowledgements have brought the
    buffer back under 90 % of its limit; the end line carries the episode's count.
    """

    def __init__(self, log: Any, max_bytes: int) -> None:
        self.log, self.max_bytes = log, max_bytes
        self.in_episode = 0
        self.active = False

    def dropped(self, count: int, size: int) -> None:
        if not self.active:
            self.active = True
            if self.log is not None:
                self.log.warning("buffer_full_dropping_oldest", max_bytes=self.max_bytes,
                                 size_bytes=size)
        self.in_episode += count

    def check(self, size: int) -> None:
        if self.active and size < self.max_bytes * DROP_EPISODE_END:
            if self.log is not None:
                self.log.warning("buffer_drops_ended", dropped=self.in_episode, size_bytes=size)
            self.active, self.in_episode = False, 0


class FailureEpisodes:
    """Counts failures of a repeated operation; logs the first of a run and the recovery."""

    def __init__(self, log: Any, event: str, **fields: Any) -> None:
        self.log, self.event, self.fields = log, event, fields
        self.failures = 0
        self.in_episode = 0
        self.last_error: str | None = None

    def failed(self, error: str) -> None:
        self.failures += 1
        self.in_episode += 1
        self.last_error = error
        if self.in_episode == 1 and self.log is not None:
            self.log.error(f"{self.event}_failed", error=error, **self.fields)

    def succeeded(self) -> None:
        if self.in_episode and self.log is not None:
            self.log.warning(f"{self.event}_recovered", failures=self.in_episode, **self.fields)
        self.in_episode = 0
        self.last_error = None
