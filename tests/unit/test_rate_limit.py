"""The per-client token bucket."""

from __future__ import annotations

import pytest

from gateway.rate_limit import RateLimiter, retry_after_header


def test_burst_then_refill_at_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.acquire("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a", now=0.0)
    assert wait == pytest.approx(0.5)  # one token comes back every 1/rate seconds
    assert limiter.acquire("a", now=0.5) == 0.0
    assert limiter.acquire("a", now=0.5) > 0


def test_clients_are_independent_and_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2)
    assert limiter.acquire("a", now=0.0) == 0.0
    assert limiter.acquire("a", now=0.0) > 0
    assert limiter.acquire("b", now=0.0) == 0.0
    limiter.acquire("c", now=0.0)  # "a" is forgotten: the oldest
    assert limiter.acquire("a", now=0.0) == 0.0


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(2.2) == "3"


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
