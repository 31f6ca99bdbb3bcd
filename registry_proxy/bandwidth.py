"""The cap on upstream traffic: one token bucket shared by every blob transfer.

Bytes are charged as they arrive from the upstream; a transfer that is ahead of the rate
stops reading until the link is its again, and TCP's flow control slows the sender, so
the cap holds on the wire and not only on disk. Content served from the store never
passes through here.

Transfers a client is waiting for go first: the bucket keeps two timelines, one for
client transfers and one for everything (background replication). A client transfer
waits only behind other client bytes; a background transfer waits behind all of them,
so replication gets what the clients leave. Bytes a background transfer had already
received when a client arrived still count against the cap (they crossed the link), so
over any span longer than one read the total stays at the rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Bandwidth:
    """A token bucket of ``rate`` bytes per second (``0``: no cap), with client priority.

    ``burst`` bytes of idle credit may be spent at once, so a small transfer after a quiet
    spell is not slowed; beyond it the rate holds.
    """

    def __init__(
        self,
        rate: int = 0,
        *,
        burst: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._free_at = 0.0  # when the link has carried every byte charged so far
        self._client_free_at = 0.0  # the same, for client transfers' bytes only
        self.waited = 0.0  # seconds transfers spent held back (for metrics and tests)

    def set_rate(self, rate: int) -> None:
        """A new cap (from the signed config) applies to the next bytes charged."""
        if rate != self.rate:
            self.rate = rate
            self._free_at = self._client_free_at = 0.0

    def reserve(self, size: int, *, background: bool) -> float:
        """Charges ``size`` bytes now; returns how long to hold the transfer back."""
        if self.rate <= 0 or size <= 0:
            return 0.0
        now = self.clock()
        earliest = now - self.burst / self.rate
        length = size / self.rate
        if background:
            start = max(earliest, self._free_at, self._client_free_at)
            self._free_at = start + length
        else:
            start = max(earliest, self._client_free_at)
            self._client_free_at = start + length
            self._free_at = max(self._free_at, earliest) + length
        end = start + length
        return max(0.0, end - now)

    async def take(self, size: int, *, background: bool = False) -> None:
        """Holds the caller back until ``size`` more bytes fit under the cap."""
        delay = self.reserve(size, background=background)
        if delay > 0:
            self.waited += delay
            await asyncio.sleep(delay)
