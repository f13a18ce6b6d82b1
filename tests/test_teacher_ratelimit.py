"""Token buckets on a fake clock (deterministic, no waiting) and the retry backoff policy."""
import asyncio
import random

import pytest

from distill.teacher.batcher import RetryPolicy
from distill.teacher.ratelimit import RateLimiter, TokenBucket


class FakeClock:
    """time.monotonic stand-in; sleeping advances it instantly."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_rpm_bucket_bounds_requests_in_every_window():
    clock = FakeClock()
    bucket = TokenBucket(120, clock=clock, sleep=clock.sleep)  # 2 per second, burst 2
    grants: list[float] = []

    async def request() -> None:
        await bucket.acquire()
        grants.append(clock())

    async def main() -> None:
        await asyncio.gather(*(request() for _ in range(50)))

    asyncio.run(main())
    assert len(grants) == 50
    for window in (0.5, 1.0, 5.0, 10.0):
        assert _max_in_window(grants, window) <= bucket.capacity + 2.0 * window
    # Paced, not merely bounded: 50 requests at 2/s after a burst of 2 take 24 s of (fake) time.
    assert grants[-1] - grants[0] == pytest.approx(24.0)


def test_tpm_bucket_paces_by_tokens_and_settles_with_real_usage():
    clock = FakeClock()
    limiter = RateLimiter(tpm=6000, clock=clock, sleep=clock.sleep)  # 100 tokens/s, burst 100
    grants: list[float] = []

    async def main() -> None:
        for _ in range(5):
            await limiter.acquire(100)
            grants.append(clock())

    asyncio.run(main())
    assert [round(b - a, 6) for a, b in zip(grants, grants[1:])] == [1.0, 1.0, 1.0, 1.0]
    # The server says the request used 20 tokens, not 100: 80 come back at once.
    limiter.settle(100, 20)
    start = clock()
    asyncio.run(limiter.acquire(80))
    assert clock() == start


def test_request_larger_than_the_bucket_is_paced_not_blocked():
    clock = FakeClock()
    bucket = TokenBucket(60, capacity=10, clock=clock, sleep=clock.sleep)  # 1 token/s

    async def main() -> None:
        await bucket.acquire(10)
        await bucket.acquire(50)  # waits for a full bucket, then goes into debt
        await bucket.acquire(1)  # pays the debt: 40 + 1 tokens at 1/s

    asyncio.run(main())
    assert clock.now == pytest.approx(100.0 + 10.0 + 41.0)


def test_backoff_is_exponential_with_jitter_capped_and_honours_retry_after():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, rng=random.Random(0))
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        delays = [policy.delay(attempt, None) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 4  # jittered
    assert policy.delay(1, 30.0) == 30.0  # the server's Retry-After wins, even above max_delay
    assert policy.delay(3, 0.0) == 0.0
