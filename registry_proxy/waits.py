"""Waiting for an event with a time limit, in a way a cancellation always ends.

``asyncio.wait_for`` in Python 3.11 returns normally when the awaited thing completes in
the same turn of the loop as the task is cancelled: the cancellation is lost. A loop that
waits for a wake-up event that way (a satellite's outbox sender, say) can then never be
stopped, and whoever awaits its end waits forever. ``asyncio.timeout`` (3.11) counts
cancellations and has no such window; the project waits with it, and for events with
``wait_event``.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """True once ``event`` is set, False when ``seconds`` passed first (None: no
    limit). A cancellation propagates even when it arrives as the event is set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
