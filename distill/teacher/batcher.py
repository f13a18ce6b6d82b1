"""Sending the pending prompts: bounded concurrency, pacing, retries, caching.

`run_async` drives an `AsyncBackend` (an HTTP server): `concurrency` worker
coroutines pull jobs from one shared iterator (memory stays flat for 10^6
prompts), each attempt first takes its share of the RPM/TPM buckets, is
bounded by a per-request timeout, and on a retryable failure (429, 5xx,
timeout, dropped connection, garbled body) waits — the server's Retry-After
when given, else exponential backoff with jitter — up to `max_attempts`.
A prompt that still fails is recorded in the cache's failure table with its
(redacted) error and the run goes on. Every answer is committed to the cache
the moment it arrives. With a `Budget` (distill/teacher/budget.py) each
prompt first reserves its estimated tokens/cost; the first refusal stops
every worker from taking new prompts while those in flight finish.

`run_batched` drives a `BatchBackend` (a local model): prompts sorted by
length so each batch pads little, one cache transaction per batch.

Both skip prompts already in the cache and send each distinct prompt once.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable, Iterator

from distill.teacher.backends.base import AsyncBackend, BatchBackend, Prompt, RequestError, SamplingParams
from distill.teacher.budget import Budget, estimate_prompt_tokens
from distill.teacher.cache import Completion, CompletionCache
from distill.teacher.progress import Progress
from distill.teacher.ratelimit import RateLimiter
from distill.teacher.redaction import redact


@dataclasses.dataclass(frozen=True)
class Job:
    """One distinct prompt to answer: its cache key and the position of its example.

    Prompts are rendered only when sent (`render(index)`), so a run over 10^6
    examples holds keys, not few-shot prompts, in memory.
    """

    key: str
    index: int


def estimate_tokens(prompt: Prompt, params: SamplingParams) -> int:
    """A rough upper estimate of a request's tokens for the TPM bucket (4 chars ~ 1 token)."""
    return estimate_prompt_tokens(prompt) + params.max_tokens * params.n


@dataclasses.dataclass
class RetryPolicy:
    """How long one attempt may take and how failed attempts are retried."""

    max_attempts: int = 6
    timeout: float = 60.0  # seconds per attempt, whole response included
    base_delay: float = 1.0  # first backoff; doubles per attempt
    max_delay: float = 60.0  # cap on one backoff of ours
    max_retry_wait: float = 300.0  # cap on a server's Retry-After (1e9 or inf must not sleep for decades)
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_wait)
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return backoff * (0.5 + 0.5 * self.rng.random())  # jitter spreads synchronized retries


def pending_jobs(jobs: list[Job], cache: CompletionCache) -> list[Job]:
    """Jobs whose key is not cached yet, each distinct key once, in first-seen order."""
    present = cache.keys_present([job.key for job in jobs])
    seen: set[str] = set()
    out = []
    for job in jobs:
        if job.key not in present and job.key not in seen:
            seen.add(job.key)
            out.append(job)
    return out


async def _attempt_until_done(prompt: Prompt, backend: AsyncBackend, params: SamplingParams, *, limiter: RateLimiter,
                              policy: RetryPolicy, progress: Progress, sleep: Callable[[float], Awaitable[None]],
                              secret: str | None) -> tuple[Completion | str, int]:
    """(Completion or the last error, redacted; attempts used)."""
    estimated = estimate_tokens(prompt, params)
    error = "no attempt made"
    for attempt in range(1, policy.max_attempts + 1):
        await limiter.acquire(estimated)
        retry_after = None
        try:
            async with asyncio.timeout(policy.timeout):  # no extra task per attempt, unlike wait_for
                completion = await backend.generate(prompt, params)
            limiter.settle(estimated, _total_tokens(completion))
            return completion.redacted(secret), attempt
        except asyncio.TimeoutError:
            error, retryable = f"timeout after {policy.timeout:g}s", True
        except RequestError as err:
            error, retryable, retry_after = str(err), err.retryable, err.retry_after
        except Exception as err:  # noqa: BLE001 - a bug or odd server must not stop the run
            error, retryable = f"{type(err).__name__}: {err}", False
        error = redact(error, secret)
        if not retryable or attempt == policy.max_attempts:
            return error, attempt
        progress.retries += 1
        await sleep(policy.delay(attempt, retry_after))
    return error, policy.max_attempts


def _total_tokens(completion: Completion) -> int | None:
    if completion.prompt_tokens is None and completion.completion_tokens is None:
        return None
    return (completion.prompt_tokens or 0) + (completion.completion_tokens or 0)


async def run_async(jobs: list[Job], render: Callable[[int], Prompt], backend: AsyncBackend,
                    cache: CompletionCache, params: SamplingParams, *,
                    concurrency: int, limiter: RateLimiter, policy: RetryPolicy, progress: Progress,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, secret: str | None = None,
                    budget: Budget | None = None) -> None:
    """Answer every job (already filtered by `pending_jobs`) into the cache, within `budget`."""
    iterator: Iterator[Job] = iter(jobs)

    async def worker() -> None:
        for job in iterator:  # the shared iterator hands each job to exactly one worker
            prompt = render(job.index)
            reservation = None
            if budget is not None:
                reservation = budget.reserve(prompt, params)
                if reservation is None:
                    return  # over budget: issue nothing more (the other workers see `exhausted`)
            result, attempts = await _attempt_until_done(prompt, backend, params, limiter=limiter,
                                                         policy=policy, progress=progress, sleep=sleep, secret=secret)
            if isinstance(result, str):
                cache.put_failure(job.key, result, attempts)
                if budget is not None:
                    budget.release(reservation)
                progress.record(ok=False)
            else:
                cache.put(job.key, result)
                if budget is not None:
                    budget.settle(reservation, result.prompt_tokens, result.completion_tokens)
                progress.record(ok=True, prompt_tokens=result.prompt_tokens,
                                completion_tokens=result.completion_tokens)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(jobs))))))


def run_batched(jobs: list[Job], render: Callable[[int], Prompt], backend: BatchBackend, cache: CompletionCache,
                params: SamplingParams, *, progress: Progress, budget: Budget | None = None) -> None:
    """Answer every job with a local model, one cache transaction per batch, within `budget`.

    Jobs are sorted by prompt length (longest first, so an out-of-memory shows
    up in the first batch) and batched in that order, so each batch pads little.
    """
    lengths = {job.key: len(str(render(job.index))) for job in jobs}
    ordered = sorted(jobs, key=lambda job: lengths[job.key], reverse=True)
    for start in range(0, len(ordered), backend.batch_size):
        batch, prompts, reservations = [], [], []
        for job in ordered[start : start + backend.batch_size]:
            prompt = render(job.index)
            reservation = budget.reserve(prompt, params) if budget is not None else None
            if budget is not None and reservation is None:
                break
            batch.append(job)
            prompts.append(prompt)
            reservations.append(reservation)
        if not batch:
            return
        completions = backend.generate_batch(prompts, params)
        cache.put_many([(job.key, completion) for job, completion in zip(batch, completions)])
        for reservation, completion in zip(reservations, completions):
            if budget is not None:
                budget.settle(reservation, completion.prompt_tokens, completion.completion_tokens)
            progress.record(ok=True, prompt_tokens=completion.prompt_tokens,
                            completion_tokens=completion.completion_tokens)
