"""Token buckets for requests-per-minute and tokens-per-minute limits.

Hosted APIs and shared inference servers reject bursts above a quota with 429s;
pacing requests client-side wastes no attempts. A bucket holds up to
`capacity` units and refills at `rate_per_minute / 60` units per second; a
request takes its units before it is sent. A request larger than the whole
capacity (a long prompt against a small TPM) waits for a full bucket and then
drives it negative, so it is paced instead of blocked forever.

The clock and the sleep function are injectable so tests can run the limiter
on a fake clock, deterministically and without waiting.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """One bucket; `acquire` is fair (FIFO) across concurrent coroutines.

    Guarantee (what the tests check): the units granted in any time window of
    length W are at most `capacity + rate_per_minute / 60 * W`.
    """

    def __init__(
        self,
        rate_per_minute: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError(f"rate_per_minute must be > 0, got {rate_per_minute}")
        self.rate_per_second = rate_per_minute / 60.0
        # Default burst: one second's worth (at least one unit), so the pace is even.
        self.capacity = float(capacity) if capacity is not None else max(1.0, self.rate_per_second)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        self._lock: asyncio.Lock | None = None

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_second)
        self._updated = now

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until `amount` units are available, then take them."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            needed = min(amount, self.capacity)
            while True:
                self._refill()
                if self._tokens >= needed:
                    self._tokens -= amount
                    return
                await self._sleep((needed - self._tokens) / self.rate_per_second)

    def adjust(self, delta: float) -> None:
        """Take `delta` more units (or give back when negative) after the fact.

        Used by the TPM bucket once the server reports the real token usage of
        a request whose cost was estimated up front.
        """
        self._refill()
        self._tokens = min(self.capacity, self._tokens - delta)


class RateLimiter:
    """RPM and TPM buckets together; either may be absent (no limit)."""

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.requests = TokenBucket(rpm, clock=clock, sleep=sleep) if rpm else None
        # Tokens per minute allow a burst of one second's quota or one large request.
        self.tokens = TokenBucket(tpm, clock=clock, sleep=sleep) if tpm else None

    async def acquire(self, estimated_tokens: int) -> None:
        """Block until one request of about `estimated_tokens` tokens may be sent."""
        if self.requests is not None:
            await self.requests.acquire(1.0)
        if self.tokens is not None:
            await self.tokens.acquire(float(estimated_tokens))

    def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Correct the TPM bucket with the usage the server reported."""
        if self.tokens is not None and actual_tokens is not None:
            self.tokens.adjust(float(actual_tokens - estimated_tokens))
