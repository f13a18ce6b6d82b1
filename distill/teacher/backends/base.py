"""Types shared by every backend and the batcher.

Two shapes of backend exist because the work is shaped differently: an HTTP
server wants many independent requests in flight (`AsyncBackend`), a local
model wants prompts grouped into padded batches (`BatchBackend`). Both
return `Completion`s, which the cache stores as they are. A third, the Batch
API (`JobsBackend`), takes every pending prompt at once and stores the
answers itself, because they come back hours later as files.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from distill.teacher.cache import Completion

# A rendered prompt: plain text (completion rendering) or chat messages
# [{"role": "system"|"user"|"assistant", "content": str}, ...].
Prompt = str | list[dict[str, str]]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """What, besides the prompt and model, decides the answer (part of the cache key)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "n": self.n, "stop": list(self.stop)}


class RequestError(Exception):
    """A failed attempt; `retryable` says whether trying again may help.

    The message must already be free of secrets (backends redact it).
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class AsyncBackend(Protocol):
    kind: str
    model: str

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        """One attempt; raises RequestError on failure (the caller bounds its time and retries)."""

    async def aclose(self) -> None: ...


class BatchBackend(Protocol):
    kind: str
    model: str
    batch_size: int

    def generate_batch(self, prompts: list[Prompt], params: SamplingParams) -> list[Completion]:
        """Completions for `prompts`, in the same order."""


class JobsBackend(Protocol):
    """A backend that takes every pending prompt at once (the Batch API, openai_batch.py)."""

    kind: str  # the cache key's backend
    name: str  # the accounting name (distill/teacher/accounting.py)
    model: str

    def run_jobs(self, jobs: list, render: Callable[[int], Prompt], cache: Any, params: SamplingParams, *,
                 budget: Any, progress: Any) -> list[str]:
        """Answer the jobs (batcher.Job) into the cache within the budget; notes for the summary."""


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the first stop string: what a server does with `stop`, for local backends."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text if cut < 0 else text[:cut]
