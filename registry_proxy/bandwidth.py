"""One cap on the satellite's upstream traffic, with clients served first.

A token bucket (``rate`` bytes per second, a burst of a quarter second of it, at least
64 KiB) through which every byte received from an upstream passes: pull-through fills
for clients and replication's fills alike. What the satellite serves from its store is
never slowed; only what it fetches.

Transfers are foreground (a client is waiting for them) or background (replication). A
background transfer waits while any foreground one is running, so a runtime's pull is
never queued behind the site's replication; a fill a client joins becomes foreground.
``rate`` 0 or None is no cap (priority still holds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

MIN_BURST = 64 * 1024


class Bandwidth:
    def __init__(
        self,
        rate: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.clock = clock
        self.sleep = sleep
        self.rate = rate or None
        self._tokens = 0.0
        self._last = clock()
        self.foreground = 0  # foreground transfers running now
        self._idle = asyncio.Event()  # set while no foreground transfer runs
        self._idle.set()

    def enter_foreground(self) -> None:
        self.foreground += 1
        self._idle.clear()

    def leave_foreground(self) -> None:
        self.foreground -= 1
        if self.foreground <= 0:
            self.foreground = 0
            self._idle.set()

    def set_rate(self, rate: int | None) -> None:
        self._refill()
        self.rate = rate or None
        self._tokens = min(self._tokens, self.burst)

    @property
    def burst(self) -> float:
        return max(MIN_BURST, (self.rate or 0) / 4)

    def _refill(self) -> None:
        now = self.clock()
        if self.rate:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def take(self, n: int, *, background: bool) -> None:
        """Accounts for ``n`` bytes received; sleeps as long as the cap requires (the
        bucket may go into debt by one chunk, which the next takes pay back)."""
        if background:
            await self._idle.wait()
        if not self.rate:
            return
        self._refill()
        self._tokens -= n
        if self._tokens < 0:
            await self.sleep(-self._tokens / self.rate)
