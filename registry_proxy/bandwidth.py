"""The cap on upstream traffic: one token bucket shared by every transfer from upstream.

Every blob byte received from an upstream (pull-through fills for clients and background
replication alike) takes tokens from one bucket refilled at ``rate`` bytes per second;
content served from the store never passes through it. A transfer that finds the bucket
short waits until its bytes are paid for, so the total rate settles at the cap.

Clients come first: while any client transfer is under way, background transfers wait
(they take their tokens in small pieces, so a client arriving behind them waits at most
for the pieces already taken). A rate of 0 means no cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

PIECE = 64 * 1024  # background transfers pay in pieces of at most this many bytes
BURST_SECONDS = 0.1  # the bucket holds at most this much of the rate (and one piece)


class Bandwidth:
    def __init__(
        self,
        rate: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.rate = 0
        self._tokens = 0.0
        self._last = clock()
        self._clients = 0
        self._changed = asyncio.Event()  # set (and replaced) when the client count changes
        self.taken = 0  # bytes that went through the bucket (while capped)
        self.waited = 0.0  # seconds transfers spent waiting for tokens
        self.first_paid: float | None = None  # clock at the first and last bytes paid for
        self.last_paid: float | None = None
        self.set_rate(rate)

    def set_rate(self, rate: int) -> None:
        """A new cap (bytes per second, 0: none), effective for the next bytes."""
        self._refill()
        self.rate = max(0, int(rate))
        self._tokens = min(self._tokens, self._capacity())

    def _capacity(self) -> float:
        return max(float(PIECE), self.rate * BURST_SECONDS)

    def _refill(self) -> None:
        now = self._clock()
        if self.rate > 0:
            self._tokens = min(self._capacity(), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def client_started(self) -> None:
        """A client transfer began: background transfers hold back until it ends."""
        self._clients += 1
        self._signal()

    def client_finished(self) -> None:
        self._clients = max(0, self._clients - 1)
        self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def clients(self) -> int:
        return self._clients

    async def take(self, n: int, *, background: Callable[[], bool] | None = None) -> None:
        """Pays for ``n`` bytes received; returns once the cap allows them. A transfer
        for which ``background()`` is true pays in pieces, each only while no client
        transfer runs (a transfer a client joins turns into a client's on the way)."""
        if self.rate <= 0:
            return
        if background is None:
            await self._pay(n)
            return
        while n > 0:
            while self._clients > 0 and background():
                await self._changed.wait()
            if self.rate <= 0:
                return
            piece = min(n, PIECE)
            await self._pay(piece)
            n -= piece

    async def _pay(self, n: int) -> None:
        self._refill()
        if self.first_paid is None:
            self.first_paid = self._last
        self._tokens -= n
        self.taken += n
        if self._tokens < 0:
            delay = -self._tokens / self.rate
            self.waited += delay
            await self._sleep(delay)
        self.last_paid = self._clock()

    def paid_rate(self) -> float | None:
        """Bytes per second over the time bytes were paid for (first to last): the rate
        the cap let through, without the time spent before and after transferring."""
        if self.first_paid is None or self.last_paid is None:
            return None
        span = self.last_paid - self.first_paid
        return self.taken / span if span > 0 else None
