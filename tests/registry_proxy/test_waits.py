"""wait_event: a cancellation is never lost, even one that arrives as the event is set
(asyncio.wait_for in Python 3.11 loses it; a satellite's loops could then not stop)."""

from __future__ import annotations

import asyncio

import pytest

from registry_proxy.waits import wait_event


async def test_a_cancellation_arriving_with_the_wake_up_still_cancels() -> None:
    for turns in range(4):
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_event(event, 30))
        for _ in range(turns):
            await asyncio.sleep(0)
        event.set()  # woken and cancelled in the same turn of the loop
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert waiter.cancelled(), turns


async def test_set_or_timed_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 30) is True
    assert await wait_event(event, None) is True  # already set: at once
