"""The OpenAI Batch API as a teacher backend: files in, a batch, files out, at the batch discount.

For 10^4-10^6 prompts that need no answer within the hour: the requests are
written as JSON lines, uploaded (`POST /files`, purpose "batch"), run as one
batch per input file (`POST /batches`, completion window 24h), polled
(`GET /batches/{id}`) and their output and error files downloaded
(`GET /files/{id}/content`). The flow, the resume-after-kill logic and the
merge into the cache are in distill/teacher/batch_runner.py; this module is
the HTTP client and the backend object `run_teacher` is given.

`BatchAPI` shares the online backend's URL check, Authorization header,
error conversion and redaction (openai_http.py) and the batcher's retry
policy (distill/teacher/batcher.py): every call is retried on 429, 5xx and
dropped connections with the same backoff, so a flaky poll never ends a run
that is waiting on a paid batch.

Cache keys use the kind "openai": a prompt answered by a batch is the same
row an online run would store, so the two modes resume each other.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

import httpx

from distill.teacher.accounting import BATCH_BACKEND
from distill.teacher.backends.base import Prompt, RequestError, SamplingParams
from distill.teacher.backends.openai_http import (auth_headers, check_base_url, response_error,
                                                  transport_error)
from distill.teacher.batch_runner import BatchSettings, run_batches
from distill.teacher.batcher import Job, RetryPolicy
from distill.teacher.budget import Budget
from distill.teacher.cache import CompletionCache
from distill.teacher.progress import Progress


class BatchAPI:
    """Files and batches endpoints under `base_url` (e.g. https://host/v1), synchronous, with retries."""

    def __init__(self, *, base_url: str, api_key: str | None, policy: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._secret = api_key
        self._policy = policy
        self._sleep = sleep
        self._client = httpx.Client(base_url=check_base_url(base_url) + "/", headers=auth_headers(api_key),
                                    timeout=policy.timeout)

    def _send(self, what: str, send: Callable[[], httpx.Response]) -> httpx.Response:
        """`send()` until it succeeds, retrying what may succeed later; RequestError otherwise."""
        for attempt in range(1, self._policy.max_attempts + 1):
            try:
                response = send()
            except httpx.TransportError as err:
                error = transport_error(err, self._secret)
            else:
                if response.status_code < 300:
                    return response
                error = response_error(response.status_code, response.text, response.headers.get("retry-after"),
                                       what, self._secret)
            if not error.retryable or attempt == self._policy.max_attempts:
                raise error
            self._sleep(self._policy.delay(attempt, error.retry_after))
        raise AssertionError("unreachable")

    def _json(self, what: str, send: Callable[[], httpx.Response]) -> dict[str, Any]:
        for attempt in range(1, self._policy.max_attempts + 1):
            response = self._send(what, send)
            try:
                data = response.json()
            except ValueError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                return data
            if attempt == self._policy.max_attempts:
                raise RequestError(f"malformed response from {what}", retryable=False)
            self._sleep(self._policy.delay(attempt, None))
        raise AssertionError("unreachable")

    def upload(self, handle: IO[bytes], name: str) -> str:
        """The id of the uploaded JSONL input file (`handle` is read from its start on every attempt)."""
        def send() -> httpx.Response:
            handle.seek(0)
            return self._client.post("files", data={"purpose": "batch"},
                                     files={"file": (name, handle, "application/jsonl")})
        return self._json("/files", send)["id"]

    def create(self, input_file_id: str, endpoint: str, completion_window: str) -> dict[str, Any]:
        body = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": completion_window}
        return self._json("/batches", lambda: self._client.post("batches", json=body))

    def get(self, batch_id: str) -> dict[str, Any]:
        return self._json(f"/batches/{batch_id}", lambda: self._client.get(f"batches/{batch_id}"))

    def find(self, input_file_id: str, *, pages: int = 20) -> dict[str, Any] | None:
        """The batch made from `input_file_id`, among the newest `pages` x 100 (None when absent)."""
        after = None
        for _ in range(pages):
            params = {"limit": 100, **({"after": after} if after else {})}
            response = self._send("/batches", lambda: self._client.get("batches", params=params))
            try:
                page = response.json()
                batches = list(page["data"])
            except (ValueError, KeyError, TypeError):
                raise RequestError("malformed batch list from /batches", retryable=False) from None
            for batch in batches:
                if isinstance(batch, dict) and batch.get("input_file_id") == input_file_id:
                    return batch
            if not page.get("has_more") or not batches:
                return None
            after = batches[-1].get("id")
        return None

    def download(self, file_id: str, handle: IO[bytes]) -> None:
        """A file's content into `handle` (streamed: output files of 10^6 answers run to gigabytes)."""
        def send() -> httpx.Response:
            handle.seek(0)
            handle.truncate()
            with self._client.stream("GET", f"files/{file_id}/content") as response:
                if response.status_code < 300:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                else:
                    response.read()
                return response
        self._send(f"/files/{file_id}/content", send)

    def close(self) -> None:
        self._client.close()


class OpenAIBatchBackend:
    """`distill teacher --backend openai-batch`: `run_jobs` submits, waits for and merges batches."""

    kind = "openai"  # the cache key's backend: shared with the online backend on purpose
    name = BATCH_BACKEND  # the accounting name: priced at the batch discount

    def __init__(self, *, base_url: str, model: str, api_key: str | None,
                 settings: BatchSettings = BatchSettings(), policy: RetryPolicy = RetryPolicy()) -> None:
        self.model = model
        self.settings = settings
        self._secret = api_key
        self._api = BatchAPI(base_url=base_url, api_key=api_key, policy=policy)

    def run_jobs(self, jobs: list[Job], render: Callable[[int], Prompt], cache: CompletionCache,
                 params: SamplingParams, *, budget: Budget | None, progress: Progress) -> list[str]:
        """Answer `jobs` into the cache through batches; returns notes for the summary."""
        try:
            return run_batches(self._api, jobs, render, cache, params, model=self.model, settings=self.settings,
                               budget=budget, progress=progress, secret=self._secret)
        finally:
            self._api.close()
