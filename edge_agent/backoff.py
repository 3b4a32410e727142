"""Exponential backoff with jitter for reconnects (devices and brokers alike)."""

from __future__ import annotations

import random


class Backoff:
    """Doubles the delay per failure up to a ceiling, drawn from the upper half at random.

    The jitter keeps a fleet of agents that lost the same broker from reconnecting in step.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial, self.maximum, self._attempt = initial, maximum, 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** self._attempt)
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
