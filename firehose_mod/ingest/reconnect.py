"""Reconnect policy as data: transient vs fatal errors, capped jittered backoff, reset when healthy."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio


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


@asynccontextmanager
async def read_deadline(timeout: float) -> AsyncIterator[Callable[[], None]]:
    """Cancel the body and raise TimeoutError if `touch()` is not called for `timeout` seconds.

    One watchdog task per connection instead of a timer per frame: a cancel scope per
    `recv()` cost 10-16 us a frame, more than decoding the frame.
    """
    last = time.monotonic()
    expired = False
    error: Exception | None = None

    def touch() -> None:
        nonlocal last
        last = time.monotonic()

    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal expired
            tick = max(0.01, min(1.0, timeout / 4))
            while True:
                await anyio.sleep(tick)
                if time.monotonic() - last >= timeout:
                    expired = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            yield touch
        except Exception as exc:  # re-raised below as itself, not wrapped in an ExceptionGroup
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    if expired:
        raise TimeoutError(f"no frame for {timeout}s")
