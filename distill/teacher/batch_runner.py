"""Answering pending prompts through the Batch API: submit, wait, merge, resubmit what is missing.

One call of `run_batches`, top to bottom:

1. Resume. Batches recorded in the cache (distill/teacher/batch_store.py)
   and not merged yet that hold any pending prompt are polled again, not
   resubmitted; an input file recorded without a batch id (a kill between
   upload and create) is looked up by its file id, and only created when the
   server has no batch for it.
2. Submit the pending prompts no batch holds: one JSON line per request
   (`custom_id` = cache key, the online backend's exact body), input files
   split at `max_requests_per_file` and `max_bytes_per_file` (the
   provider's limits), each uploaded and turned into one batch. With a
   budget, each request reserves its estimate and the files stop where
   the budget would be exceeded.
3. Poll every batch, backing off from `poll_interval` to
   `max_poll_interval`, for at most `max_wait` seconds; after that the
   batches keep running on the server and a rerun resumes them.
4. A batch that ends (completed, failed, expired, cancelled) is merged:
   its output and error files are downloaded and every line is stored, in
   one transaction with the row's "merged" mark. An answer becomes a
   completion; an error-file entry, a non-200 response, a garbled body or an
   unreadable line becomes that one request's failure (as the online
   backend records failures), never an exception. Requests a completed
   batch left without any line are failed; those of a failed, expired or
   cancelled batch are resubmitted (up to `max_rounds` submissions per
   prompt in one run) and only those.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

from distill.errors import UserError
from distill.jsonl import jsonl_line, parse_json
from distill.teacher.backends.base import Prompt, RequestError, SamplingParams
from distill.teacher.backends.openai_http import completion_from_body, request_body
from distill.teacher.batch_store import TERMINAL, BatchStore
from distill.teacher.batcher import Job
from distill.teacher.budget import Budget, Reservation
from distill.teacher.cache import CompletionCache
from distill.teacher.progress import Progress
from distill.teacher.redaction import redact



class BatchAPI(Protocol):
    """The files and batches endpoints the runner drives (distill/teacher/backends/openai_batch.py, or a fake)."""

    def upload(self, handle: IO[bytes], name: str) -> str: ...

    def create(self, input_file_id: str, endpoint: str, completion_window: str) -> dict[str, Any]: ...

    def get(self, batch_id: str) -> dict[str, Any]: ...

    def find(self, input_file_id: str) -> dict[str, Any] | None: ...

    def download(self, file_id: str, handle: IO[bytes]) -> None: ...

_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"([0-9a-f]{64})"')


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """Provider limits and the polling schedule (the CLI's --batch-* flags)."""

    max_requests_per_file: int = 50_000
    max_bytes_per_file: int = 200_000_000
    poll_interval: float = 15.0  # seconds before the second poll; doubles up to max_poll_interval
    max_poll_interval: float = 300.0
    max_wait: float = 25 * 3600.0  # seconds this run waits; a 24h batch that expires ends before it
    max_rounds: int = 3  # submissions per prompt in one run (expired / failed / cancelled batches resubmit)
    completion_window: str = "24h"


class _InputFile:
    """A JSONL input file being filled on disk (a 200 MB file never sits in memory)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.handle: IO[bytes] = tempfile.TemporaryFile()
        self.keys: list[str] = []
        self.size = 0

    def add(self, key: str, line: bytes) -> None:
        self.handle.write(line)
        self.keys.append(key)
        self.size += len(line)


def _error_text(value: Any) -> str:
    """The message of an API error object ({"code", "message"} or {"error": {...}}), or its JSON."""
    if isinstance(value, dict):
        inner = value.get("error", value)
        if isinstance(inner, dict) and (inner.get("message") or inner.get("code")):
            return str(inner.get("message") or inner.get("code"))
    return str(value)[:300]


class _Run:
    def __init__(self, api: BatchAPI, store: BatchStore, jobs: list[Job], render: Callable[[int], Prompt],
                 params: SamplingParams, *, model: str, settings: BatchSettings, budget: Budget | None,
                 progress: Progress, secret: str | None, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.api, self.store, self.cache = api, store, store.cache
        self.jobs = {job.key: job for job in jobs}
        self.render, self.params, self.model, self.settings = render, params, model, settings
        self.budget, self.progress, self.secret = budget, progress, secret
        self.clock, self.sleep = clock, sleep
        self.reservations: dict[str, Reservation | None] = {}
        self.rounds: collections.Counter[str] = collections.Counter()
        self.active: list[str] = []  # input file ids of batches being waited on
        self.notes: list[str] = []

    # --- 1. resume -------------------------------------------------------------------------------
    def resume(self) -> set[str]:
        """Adopt the unmerged batches holding pending prompts; returns the prompts they hold."""
        covered: set[str] = set()
        for file_id, keys in self.store.unmerged_covering(self.jobs).items():
            row = self.store.row(file_id)
            try:
                if row.batch_id is None:
                    batch = self.api.find(file_id) or self.api.create(file_id, row.endpoint,
                                                                      self.settings.completion_window)
                    self.store.set_batch(file_id, batch)
            except RequestError as err:
                self.notes.append(redact(f"could not resume the batch of input file {file_id}: {err}", self.secret))
                covered |= keys  # not resubmitted: a rerun tries to resume it again
                continue
            for key in keys:
                self.rounds[key] += 1
                if self.budget is not None:  # already submitted: it will be spent whatever the limit
                    self.reservations[key] = self.budget.hold(self.render(self.jobs[key].index), self.params)
            covered |= keys
            self.active.append(file_id)
        return covered

    # --- 2. submit -------------------------------------------------------------------------------
    def submit(self, keys: list[str]) -> None:
        """Write, upload and start batches for `keys`, within the budget and the per-file limits."""
        current: _InputFile | None = None
        limit_requests, limit_bytes = self.settings.max_requests_per_file, self.settings.max_bytes_per_file
        for key in keys:
            prompt = self.render(self.jobs[key].index)
            path, body = request_body(self.model, prompt, self.params)
            endpoint = "/v1" + path
            line = jsonl_line({"custom_id": key, "method": "POST", "url": endpoint, "body": body}).encode("utf-8")
            if len(line) > limit_bytes:
                self._fail(key, f"request is {len(line)} bytes, over the {limit_bytes}-byte input file limit "
                                "(--batch-max-bytes)")
                continue
            reservation = None
            if self.budget is not None:
                reservation = self.budget.reserve(prompt, self.params)
                if reservation is None:
                    break
            if current is not None and (len(current.keys) >= limit_requests or current.endpoint != endpoint
                                        or current.size + len(line) > limit_bytes):
                self._start(current)
                current = None
            if current is None:
                current = _InputFile(endpoint)
            current.add(key, line)
            self.reservations[key] = reservation
            self.rounds[key] += 1
        if current is not None:
            self._start(current)

    def _start(self, input_file: _InputFile) -> None:
        file_id = None
        try:
            file_id = self.api.upload(input_file.handle, "distill_teacher_batch.jsonl")
            self.store.record_file(file_id, input_file.endpoint, input_file.keys)
            batch = self.api.create(file_id, input_file.endpoint, self.settings.completion_window)
            self.store.set_batch(file_id, batch)
            self.active.append(file_id)
        except RequestError as err:
            step = "upload of a batch input file" if file_id is None else f"batch creation for {file_id}"
            for key in input_file.keys:
                self._fail(key, f"{step} failed: {err}")
        finally:
            input_file.handle.close()

    # --- 3. poll ---------------------------------------------------------------------------------
    def poll(self) -> None:
        deadline = self.clock() + self.settings.max_wait
        interval = self.settings.poll_interval
        while self.active:
            resubmit: list[str] = []
            for file_id in list(self.active):
                batch_id = self.store.row(file_id).batch_id
                try:
                    batch = self.api.get(batch_id)
                    self.store.update(file_id, batch)
                    if batch.get("status") in TERMINAL:
                        resubmit += self.merge(file_id, batch)
                        self.active.remove(file_id)
                except RequestError as err:
                    self.notes.append(redact(f"batch {batch_id}: {err}; rerun the same command to resume it",
                                             self.secret))
                    self.active.remove(file_id)
            if resubmit:
                self.submit(resubmit)
            if not self.active:
                return
            left = deadline - self.clock()
            if left <= 0:
                self.notes.append(f"{len(self.active)} batch(es) still running after {self.settings.max_wait:g}s "
                                  "(--batch-max-wait); rerun the same command to resume polling them")
                return
            self.sleep(min(interval, left))
            interval = min(interval * 2, self.settings.max_poll_interval)

    # --- 4. merge --------------------------------------------------------------------------------
    def merge(self, file_id: str, batch: dict[str, Any]) -> list[str]:
        """Store a finished batch's results; returns this run's prompts to resubmit."""
        row = self.store.row(file_id)
        batch_keys = set(self.store.keys(file_id))
        chat = row.endpoint.endswith("/chat/completions")
        answered: dict[str, tuple[int | None, int | None]] = {}
        failed: set[str] = set()
        with tempfile.TemporaryFile() as outputs, tempfile.TemporaryFile() as errors:
            for result_file, handle in ((batch.get("output_file_id"), outputs), (batch.get("error_file_id"), errors)):
                if result_file:
                    self.api.download(result_file, handle)
            with self.cache.db:  # one transaction: every result and the merged mark, or nothing
                for handle, result_file in ((outputs, batch.get("output_file_id")),
                                            (errors, batch.get("error_file_id"))):
                    handle.seek(0)
                    for number, raw in enumerate(handle, start=1):
                        self._merge_line(raw, f"batch {row.batch_id} file {result_file} line {number}",
                                         batch_keys, chat, answered, failed)
                missing = batch_keys - answered.keys() - failed
                if batch.get("status") == "completed":
                    for key in missing:
                        self.cache.insert_failure(key, f"batch {row.batch_id} completed without a result for "
                                                  "this request", 1)
                    failed |= missing
                    missing = set()
                self.store.mark_merged(file_id)
        for key, (prompt_tokens, completion_tokens) in answered.items():
            if key in self.jobs:
                if self.budget is not None:
                    self.budget.settle(self.reservations.pop(key, None), prompt_tokens, completion_tokens)
                self.progress.record(ok=True, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        for key in failed & self.jobs.keys():
            self._settle_failed(key)
        retry = []
        reason = f"batch {row.batch_id} {batch.get('status')}"
        if batch.get("errors"):
            reason += ": " + _error_text((batch["errors"].get("data") or [{}])[0]
                                         if isinstance(batch["errors"], dict) else batch["errors"])
        for key in sorted(missing & self.jobs.keys(), key=lambda k: self.jobs[k].index):
            if self.budget is not None:
                self.budget.release(self.reservations.pop(key, None))
            if self.rounds[key] < self.settings.max_rounds:
                retry.append(key)
            else:
                self._fail(key, redact(reason, self.secret))
        return retry

    def _merge_line(self, raw: bytes, where: str, batch_keys: set[str], chat: bool,
                    answered: dict[str, tuple[int | None, int | None]], failed: set[str]) -> None:
        if not raw.strip():
            return
        try:
            record = parse_json(raw.decode("utf-8", errors="replace"), where)
            if not isinstance(record, dict):
                raise UserError(f"{where}: not a JSON object")
        except UserError:
            found = _CUSTOM_ID.search(raw)  # an unreadable line: fail the request it names, if any
            key = found.group(1).decode() if found else None
            if key in batch_keys and key not in answered:
                self._insert_failure(key, f"{where}: unreadable result line", failed)
            return
        key = record.get("custom_id")
        if key not in batch_keys or key in answered:
            return
        response, error = record.get("response"), record.get("error")
        if error:
            self._insert_failure(key, f"{where}: {_error_text(error)}", failed)
            return
        if not isinstance(response, dict) or response.get("status_code") != 200:
            status = response.get("status_code") if isinstance(response, dict) else None
            body = response.get("body") if isinstance(response, dict) else None
            self._insert_failure(key, f"HTTP {status} in {where}: {_error_text(body)}", failed)
            return
        try:
            completion = completion_from_body(response.get("body"), chat=chat, n=self.params.n, where=where)
        except RequestError as err:
            self._insert_failure(key, str(err), failed)
            return
        completion = completion.redacted(self.secret)
        self.cache.insert(key, completion)
        failed.discard(key)
        answered[key] = (completion.prompt_tokens, completion.completion_tokens)

    def _insert_failure(self, key: str, error: str, failed: set[str]) -> None:
        self.cache.insert_failure(key, redact(error, self.secret), 1)
        failed.add(key)

    def _fail(self, key: str, error: str) -> None:
        """Record a failure outside a merge (its own commit) and settle its budget and progress."""
        self.cache.put_failure(key, redact(error, self.secret), max(1, self.rounds[key]))
        self._settle_failed(key)

    def _settle_failed(self, key: str) -> None:
        if self.budget is not None:
            self.budget.release(self.reservations.pop(key, None))
        self.progress.record(ok=False)


def run_batches(api: BatchAPI, jobs: list[Job], render: Callable[[int], Prompt], cache: CompletionCache,
                params: SamplingParams, *, model: str, settings: BatchSettings, budget: Budget | None,
                progress: Progress, secret: str | None, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Answer `jobs` (pending, distinct) into `cache` through batches; returns notes for the summary."""
    run = _Run(api, BatchStore(cache), jobs, render, params, model=model, settings=settings, budget=budget,
               progress=progress, secret=secret, clock=clock, sleep=sleep)
    covered = run.resume()
    run.submit([job.key for job in jobs if job.key not in covered])
    run.poll()
    return run.notes
