"""Reconnect policy as data: transient vs fatal errors, capped jittered backoff, reset when healthy."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff 2^n * base, capped, with full jitter; resets after a healthy period.

    Call `connected()` when a connection is up and `delay()` after it fails; if the last
    connection stayed up longer than `healthy_after` seconds, the next delay starts over.
    """

    base: float = 0.5
    cap: float = 60.0
    healthy_after: float = 30.0
    attempts: int = 0
    _connected_at: float | None = field(default=None, repr=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def delay(self) -> float:
        if self._connected_at is not None and time.monotonic() - self._connected_at >= self.healthy_after:
            self.attempts = 0
        self._connected_at = None
        ceiling = min(self.cap, self.base * (2**self.attempts))
        self.attempts += 1
        return self.rng.uniform(ceiling / 2, ceiling)
