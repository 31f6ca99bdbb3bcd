"""The upstream bandwidth cap: the rate holds over any chunking, and clients come first.
Time is a fake clock advanced by the bucket's own sleeps, so nothing here is timed."""

from __future__ import annotations

import asyncio

from registry_proxy.bandwidth import MIN_BURST, Bandwidth


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_the_rate_holds_whatever_the_chunk_sizes() -> None:
    for rate, chunks in ((1_000_000, [65536] * 200), (10_000_000, [1 << 20, 1, 300_000] * 20)):
        t = FakeTime()
        bw = Bandwidth(rate, clock=t.clock, sleep=t.sleep)
        for n in chunks:
            await bw.take(n, background=False)
        # everything but the first burst waits for the rate (the bucket starts empty)
        expected = sum(chunks) / rate
        assert abs(t.now - expected) <= MIN_BURST / rate + 1e-9, (t.now, expected)


async def test_no_rate_is_no_cap_and_a_new_rate_applies_at_once() -> None:
    t = FakeTime()
    bw = Bandwidth(None, clock=t.clock, sleep=t.sleep)
    await bw.take(10**9, background=True)
    assert t.now == 0.0
    bw.set_rate(1_000_000)
    await bw.take(2_000_000, background=False)
    assert 1.9 <= t.now <= 2.0


async def test_background_waits_while_a_client_transfer_runs() -> None:
    bw = Bandwidth(None)
    bw.enter_foreground()
    background = asyncio.create_task(bw.take(1, background=True))
    await asyncio.sleep(0.01)
    assert not background.done()  # replication yields to the client's fill
    await bw.take(1, background=False)  # the client's own bytes are not held up
    bw.leave_foreground()
    await asyncio.wait_for(background, 5)
