"""Sliding one-minute windows of requests and tokens, per identity."""

from __future__ import annotations

from lokal.server.security.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_over_the_limit_wait_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    limiter = RateLimiter(rpm=3, tpm=0, clock=clock)
    for _ in range(3):
        assert limiter.admit("key:a") is None
        clock.now += 1
    wait = limiter.admit("key:a")
    assert wait is not None and abs(wait - 57) < 1e-6
    assert limiter.admit("key:b") is None  # other keys have their own window
    clock.now += 57
    assert limiter.admit("key:a") is None


def test_tokens_over_the_limit_refuse_new_requests_until_they_age_out() -> None:
    clock = Clock()
    limiter = RateLimiter(rpm=0, tpm=100, clock=clock)
    assert limiter.admit("key:a") is None
    limiter.charge("key:a", 60)
    clock.now += 10
    assert limiter.admit("key:a") is None
    limiter.charge("key:a", 60)
    clock.now += 10
    wait = limiter.admit("key:a")  # 120 tokens in the window: wait for the first 60 to leave
    assert wait is not None and abs(wait - 40) < 1e-6
    clock.now += 40
    assert limiter.admit("key:a") is None


def test_no_limits_admit_everything() -> None:
    limiter = RateLimiter(rpm=0, tpm=0)
    assert not limiter.enabled
    assert all(limiter.admit("addr:x") is None for _ in range(1000))
