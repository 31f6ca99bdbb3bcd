"""The upstream bandwidth cap: a token bucket whose client transfers go first."""

from __future__ import annotations

import asyncio

import pytest

from registry_proxy.bandwidth import Bandwidth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_cap_never_holds_back() -> None:
    bucket = Bandwidth(0)
    assert bucket.reserve(10**9, background=True) == 0.0
    assert bucket.reserve(10**9, background=False) == 0.0


def test_bytes_are_spread_at_the_rate_after_the_burst() -> None:
    clock = Clock()
    bucket = Bandwidth(1000, burst=500, clock=clock)
    assert bucket.reserve(500, background=True) == 0.0  # the idle credit
    assert bucket.reserve(500, background=True) == pytest.approx(0.5)
    assert bucket.reserve(1000, background=True) == pytest.approx(1.5)
    clock.now += 1.5  # the link carried it all: the next bytes wait their own time
    assert bucket.reserve(1000, background=True) == pytest.approx(1.0)


def test_over_a_long_run_the_rate_holds_whatever_the_piece_sizes() -> None:
    clock = Clock()
    bucket = Bandwidth(10_000, burst=0, clock=clock)
    total = 0
    for size in [1, 4096, 65536, 300, 1024 * 1024, 7] * 20:
        clock.now += bucket.reserve(size, background=True)
        total += size
    assert clock.now - 100.0 == pytest.approx(total / 10_000)


def test_idle_time_earns_at_most_the_burst() -> None:
    clock = Clock()
    bucket = Bandwidth(1000, burst=100, clock=clock)
    clock.now += 3600
    assert bucket.reserve(100, background=True) == 0.0
    assert bucket.reserve(1000, background=True) == pytest.approx(1.0)


def test_a_client_waits_only_behind_client_bytes_and_replication_behind_all() -> None:
    clock = Clock()
    bucket = Bandwidth(1000, burst=0, clock=clock)
    assert bucket.reserve(2000, background=True) == pytest.approx(2.0)
    # a client arriving now does not queue behind the replication's two seconds
    assert bucket.reserve(100, background=False) == pytest.approx(0.1)
    assert bucket.reserve(100, background=False) == pytest.approx(0.2)
    # the next replication bytes wait for everything charged, the client's included
    assert bucket.reserve(100, background=True) == pytest.approx(2.3)


def test_a_new_rate_applies_to_the_next_bytes() -> None:
    clock = Clock()
    bucket = Bandwidth(1000, burst=0, clock=clock)
    assert bucket.reserve(1000, background=True) == pytest.approx(1.0)
    bucket.set_rate(0)
    assert bucket.reserve(10**6, background=True) == 0.0
    bucket.set_rate(2000)
    assert bucket.reserve(1000, background=True) == pytest.approx(0.5)


async def test_take_sleeps_the_reserved_time() -> None:
    bucket = Bandwidth(1_000_000, burst=0)
    sleeping = asyncio.ensure_future(bucket.take(50_000, background=True))
    await asyncio.sleep(0)
    assert not sleeping.done()  # held back, not refused
    await sleeping
    assert bucket.waited == pytest.approx(0.05, abs=0.01)
    await bucket.take(0, background=False)  # nothing to charge: no wait
