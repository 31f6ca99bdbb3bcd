"""The body deadline's arithmetic, pure: virtual time in, the broken limit out."""

from __future__ import annotations

import pytest

from registry_proxy.deadline import BodyLimits, _Meter

KIB = 1024


def test_a_steady_slow_upload_never_trips() -> None:
    """A large layer over a slow but steady link (2 KiB/s for 100 windows of 30 s)."""
    meter = _Meter(BodyLimits(min_rate=KIB, window=30.0))
    for _ in range(3000):
        budget = meter.budget()
        assert budget is not None and budget > 1.0
        assert meter.advance(1.0, 2 * KIB) is None


def test_a_trickle_trips_at_the_end_of_the_first_window() -> None:
    meter = _Meter(BodyLimits(min_rate=KIB, window=30.0))
    broken = None
    waited = 0.0
    for _ in range(10):  # one byte every 8 s
        waited += 8.0
        broken = meter.advance(8.0, 1)
        if broken:
            break
    assert broken is not None and "1024 bytes/s over 30 s" in broken
    assert waited == 32.0


def test_a_paid_window_then_a_stall_waits_until_the_end_of_the_next() -> None:
    meter = _Meter(BodyLimits(min_rate=KIB, window=30.0))
    assert meter.advance(1.0, 30 * KIB) is None  # this window is paid at once
    assert meter.budget() == pytest.approx(59.0)
    assert meter.advance(58.0, 0) is None
    assert meter.advance(2.0, 0) is not None


def test_only_the_overall_timeout() -> None:
    meter = _Meter(BodyLimits(min_rate=0, window=30.0, timeout=10.0))
    assert meter.budget() == 10.0
    assert meter.advance(4.0, 1) is None
    assert meter.budget() == pytest.approx(6.0)
    assert meter.advance(7.0, 1) == "the request body took longer than 10 s"


def test_no_limits() -> None:
    limits = BodyLimits(min_rate=0, timeout=0)
    assert not limits.active
    assert _Meter(limits).budget() is None
