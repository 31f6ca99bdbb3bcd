"""The cap on upstream traffic: the token bucket's arithmetic on a virtual clock (the rate
is held, background transfers wait while a client transfer runs), and fills from Debian's
docker-registry going through it in-process."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from registry_proxy.bandwidth import PIECE, Bandwidth
from registry_proxy.digest import Digest
from registry_proxy.metrics import Metrics
from registry_proxy.proxy import Proxy, UpstreamLink
from registry_proxy.routing import Target
from registry_proxy.store import ContentStore
from registry_proxy.upstream import UpstreamClient
from tests.support.upstream import UpstreamRegistry, push_blob

KIB = 1024
TARGET = Target(name="team/big", repo="up/team/big", upstream="up", upstream_repo="team/big")


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_the_bucket_holds_the_rate() -> None:
    clock = VirtualClock()
    bucket = Bandwidth(100 * KIB, clock=clock, sleep=clock.sleep)
    for _ in range(50):
        await bucket.take(20 * KIB)  # 1000 KiB at 100 KiB/s
    # an empty bucket at the start: 10 s, less the burst the bucket may hold
    assert 10.0 - PIECE / (100 * KIB) <= clock.now <= 10.0
    assert bucket.taken == 1000 * KIB
    assert bucket.paid_rate() == pytest.approx(100 * KIB, rel=0.07)
    clock.now += 60  # idle: the bucket refills only up to its burst
    await bucket.take(200 * KIB)
    assert clock.slept[-1] == pytest.approx((200 * KIB - PIECE) / (100 * KIB))


async def test_no_cap_never_waits_and_a_new_rate_applies() -> None:
    clock = VirtualClock()
    bucket = Bandwidth(0, clock=clock, sleep=clock.sleep)
    await bucket.take(10**9)
    await bucket.take(10**9, background=lambda: True)
    assert clock.slept == [] and bucket.taken == 0
    assert bucket.paid_rate() is None  # nothing went through a cap
    bucket.set_rate(1000 * KIB)
    await bucket.take(2000 * KIB)  # a new cap starts from an empty bucket: no burst
    assert clock.now == pytest.approx(2.0)


async def test_background_waits_while_a_client_transfer_runs() -> None:
    clock = VirtualClock()
    bucket = Bandwidth(100 * KIB, clock=clock, sleep=clock.sleep)
    bucket.client_started()
    background = asyncio.create_task(bucket.take(3 * PIECE, background=lambda: True))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not background.done() and bucket.taken == 0  # not one piece while the client runs
    await bucket.take(50 * KIB)  # the client itself is paced, not held back
    assert bucket.taken == 50 * KIB
    bucket.client_finished()
    await asyncio.wait_for(background, 5)
    assert bucket.taken == 50 * KIB + 3 * PIECE


async def test_fills_from_upstream_are_capped_and_a_client_raises_a_background_fill(
    tmp_path: Path, upstream_registry: UpstreamRegistry
) -> None:
    size = 768 * KIB
    rate = 512 * KIB
    with httpx.Client(base_url=upstream_registry.url, timeout=60) as c:
        first = Digest.parse(push_blob(c, "team/big", os.urandom(size)))
        second = Digest.parse(push_blob(c, "team/big", os.urandom(size)))
    store = ContentStore(tmp_path / "data")
    await store.open()
    client = UpstreamClient("up", upstream_registry.url, backoff=0.01, max_backoff=0.05)
    proxy = Proxy(store, {"up": UpstreamLink(client, default=True)}, Metrics())
    try:
        proxy.bandwidth.set_rate(rate)
        started = time.monotonic()
        assert await proxy.ensure_blob(TARGET, first)
        elapsed = time.monotonic() - started
        # every byte paid for: it cannot have come faster than the cap (plus the burst)
        assert proxy.bandwidth.taken == size
        assert elapsed >= (size - PIECE) / rate
        assert (await store.blob_size(TARGET.repo, first)) == size

        # a background fill that a client joins runs at the client's priority from then on
        background = asyncio.create_task(proxy.ensure_blob(TARGET, second))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if second in proxy._fills:
                break
        fill = proxy._fills[second]
        assert fill.background and proxy.bandwidth.clients == 0
        answer = await proxy.blob(TARGET, second)
        assert not fill.background and proxy.bandwidth.clients == 1
        assert await asyncio.wait_for(background, 30)
        assert proxy.bandwidth.clients == 0  # released when the fill ended
        assert proxy.bandwidth.taken == 2 * size
        answer.close()
    finally:
        await proxy.close()
        await store.close()
