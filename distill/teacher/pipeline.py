"""One teacher run, as a library call: split file -> prompts -> cache -> outputs.

    summary = run_teacher(dataset="svamp", split="train", data_dir=..., out="teacher_out",
                          backend=OpenAIBackend(base_url=..., model=..., api_key=...))

Steps, top to bottom: read the split file (the data layer's reader, so the
outputs align with the file the loaders read); render one prompt per example
and hash it into its cache key; send the prompts the cache does not hold yet
(each distinct prompt once); vote over each prompt's samples with the data
layer's parser; write the outputs atomically; account for the tokens and
their estimated cost (distill/teacher/accounting.py, beside the outputs as
<split>.teacher_usage.json); summarize. Rerunning the same call after a
crash sends only what is missing and writes the same files.

Three kinds of backend: an `AsyncBackend` (HTTP server, driven by the
batcher's workers), a `BatchBackend` (a local model, batched), and a
`JobsBackend` (the Batch API: it takes all pending jobs at once, see
distill/teacher/batch_runner.py). A `Budget` (distill/teacher/budget.py)
limits how many requests any of them issues.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Coroutine
from typing import Any, TextIO, TypeVar

from distill.data.datasets import resolve_data_dir, valid_source
from distill.data.readers import SPLITS, read_split, split_path
from distill.data.specs import get_spec
from distill.errors import UserError
from distill.metrics import metric_fn_for
from distill.teacher import accounting, batcher, export, prompts, voting
from distill.teacher.accounting import Prices, Usage
from distill.teacher.backends.base import AsyncBackend, BatchBackend, JobsBackend, Prompt, SamplingParams
from distill.teacher.budget import Budget
from distill.teacher.cache import CompletionCache, cache_key
from distill.teacher.progress import Progress
from distill.teacher.ratelimit import RateLimiter

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TeacherSummary:
    """What the end-of-run report prints."""

    examples: int
    completed: int  # examples whose prompt has a stored answer
    failed: int  # examples whose prompt ended failed (error recorded)
    parse_failures: int  # answered, but no label + rationale recovered
    from_cache: int  # distinct prompts already stored before this run
    requested: int  # distinct prompts sent by this run
    retries: int
    prompt_tokens: int  # used by this run's requests
    completion_tokens: int
    accuracy: float | None  # teacher label vs gold, fraction in [0, 1]; None without gold
    gold_examples: int
    seconds: float
    paths: dict[str, str]  # teacher, split, llm, usage
    backend: str = ""  # the accounting name (openai, openai-batch, hf, flax_t5)
    distinct: int = 0  # distinct prompts of the split
    run_usage: Usage = Usage(0, 0, 0, None)  # answers this run stored
    total_usage: Usage = Usage(0, 0, 0, None)  # every answer the export is made of
    budget_stop: str | None = None  # the one line saying where the budget stopped the run
    notes: tuple[str, ...] = ()  # e.g. batches still running
    not_sent: int = 0  # examples whose prompt has neither an answer nor a failure (budget, batches running)


def _split_examples(dataset: str, split: str, data_dir: str, out: str,
                    limit: int | None) -> tuple[list[dict], list[dict]]:
    """(normalized examples, raw records) of the split FILE, first `limit`; UserError for bad choices."""
    get_spec(dataset)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "valid" and valid_source(dataset, data_dir) == "train":
        raise UserError(f"{dataset} has no valid file under {data_dir}: its valid split is 10% of train, "
                        "so run --split train (those outputs cover valid too)")
    source = split_path(dataset, data_dir, split)
    if not os.path.isfile(source):
        raise UserError(f"split file {source} not found; check --data-dir and --split")
    target = split_path(dataset, out, split)
    if os.path.exists(target) and os.path.samefile(source, target):
        raise UserError(f"--out {out} is the data dir itself; pass a separate output folder "
                        "(the split file would be overwritten)")
    examples, raw = read_split(dataset, data_dir, split)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be >= 1, got {limit}")
        examples, raw = examples[:limit], raw[:limit]
    return examples, raw


def run_teacher(*, dataset: str, split: str, out: str, backend: AsyncBackend | BatchBackend | JobsBackend,
                data_dir: str | None = None, cache_path: str | None = None,
                params: SamplingParams = SamplingParams(), prompt_format: str = "completion",
                exemplars_path: str | None = None, limit: int | None = None, concurrency: int = 64,
                limiter: RateLimiter | None = None, policy: batcher.RetryPolicy | None = None,
                gold_filter: bool = False, secret: str | None = None,
                progress_stream: TextIO | None = None, prices: Prices = Prices(),
                max_cost: float | None = None, max_tokens_total: int | None = None) -> TeacherSummary:
    """Prompt the teacher for every example of one split file and write the outputs under `out`.

    `max_cost` (USD, needs `prices`) and `max_tokens_total` (prompt +
    completion tokens) cap what the split's answers may use in all, cached
    ones included; the run stops issuing requests before either is exceeded.
    """
    start = time.monotonic()
    if max_cost is not None and not prices.known:
        raise UserError("--max-cost needs prices: pass --price-input and --price-output (USD per million tokens)")
    data_dir = resolve_data_dir(data_dir)
    examples, raw = _split_examples(dataset, split, data_dir, out, limit)
    prompt_set = prompts.load_exemplars(dataset, exemplars_path)
    if prompt_format not in ("completion", "chat"):
        raise UserError(f"prompt format {prompt_format!r} must be 'completion' or 'chat'")
    renderer = prompts.render_chat if prompt_format == "chat" else prompts.render_completion

    def render(index: int) -> Prompt:
        return renderer(prompt_set, examples[index]["input"])

    keys = [cache_key(backend=backend.kind, model=backend.model, prompt=render(i), params=params.as_dict())
            for i in range(len(examples))]
    cache = CompletionCache(cache_path or os.path.join(out, "teacher_cache.sqlite"))
    name = getattr(backend, "name", backend.kind)
    try:
        run_id = cache.start_run(name, backend.model)
        jobs = batcher.pending_jobs([batcher.Job(key, i) for i, key in enumerate(keys)], cache)
        distinct = len(set(keys))
        progress = Progress(distinct, already_done=distinct - len(jobs), stream=progress_stream)
        budget = None
        if max_cost is not None or max_tokens_total is not None:
            spent = accounting.priced(cache.usage(keys), prices)
            budget = Budget(max_cost=max_cost, max_tokens=max_tokens_total, prices=prices,
                            batch=name == accounting.BATCH_BACKEND, spent_tokens=spent.tokens,
                            spent_cost=spent.cost or 0.0)
        notes: list[str] = []
        if jobs and hasattr(backend, "run_jobs"):
            notes = backend.run_jobs(jobs, render, cache, params, budget=budget, progress=progress)
        elif jobs and hasattr(backend, "generate_batch"):
            batcher.run_batched(jobs, render, backend, cache, params, progress=progress, budget=budget)
        elif jobs:
            run_coroutine(_run_and_close(jobs, render, backend, cache, params, concurrency=concurrency,
                                       limiter=limiter or RateLimiter(), policy=policy or batcher.RetryPolicy(),
                                       progress=progress, secret=secret, budget=budget))
        progress.maybe_draw(force=True)
        summary = _export(dataset, split, out, examples, raw, keys, cache, gold_filter=gold_filter,
                          progress=progress, from_cache=distinct - len(jobs), start=start)
        run_usage = accounting.priced(cache.usage(keys, run_id=run_id), prices)
        total_usage = accounting.priced(cache.usage(keys), prices)
        budget_stop = None
        if budget is not None and budget.exhausted:
            flags = " / ".join(flag for flag, value in (("--max-cost", max_cost),
                                                        ("--max-tokens-total", max_tokens_total))
                               if value is not None)
            budget_stop = (f"budget reached: {total_usage.answers} of {distinct} prompts answered; rerun with a "
                           f"higher {flags} to continue (answered prompts are in the cache and are not sent again)")
        usage_file = accounting.usage_path(dataset, out, split)
        accounting.write_usage(usage_file, backend=name, model=backend.model, prices=prices, run=run_usage,
                               total=total_usage, budget_stop=budget_stop)
        return dataclasses.replace(summary, paths={**summary.paths, "usage": usage_file}, backend=name,
                                   distinct=distinct, run_usage=run_usage, total_usage=total_usage,
                                   budget_stop=budget_stop, notes=tuple(notes))
    finally:
        cache.close()


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """The coroutine's result, run on uvloop where it is installed (not on Windows), else on asyncio's loop.

    uvloop's event loop is C: it cuts the loop's share of the client's CPU a
    request (scripts/bench_teacher.py). Inside a running event loop (Jupyter,
    Colab) the coroutine runs in a worker thread with a loop of its own.
    """
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # Windows
        loop_factory = None

    def run() -> T:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coroutine)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


async def _run_and_close(jobs, render, backend, cache, params, **kwargs) -> None:
    try:
        await batcher.run_async(jobs, render, backend, cache, params, **kwargs)
    finally:
        await backend.aclose()


def _export(dataset: str, split: str, out: str, examples: list[dict], raw: list[dict], keys: list[str],
            cache: CompletionCache, *, gold_filter: bool, progress: Progress, from_cache: int,
            start: float) -> TeacherSummary:
    counts = {"completed": 0, "failed": 0, "parse_failures": 0, "not_sent": 0}
    targets, predictions = [], []

    def records():
        for example, key in zip(examples, keys):
            completion = cache.get(key)
            gold = example["label"] or None
            if completion is None:
                error = cache.failure(key)
                counts["failed" if error else "not_sent"] += 1
                result = voting.Vote(None, None, (), False, error or "not answered")
                texts: list[str] = []
            else:
                counts["completed"] += 1
                texts = list(completion.texts)
                result = voting.vote(dataset, texts, gold=gold, gold_filter=gold_filter)
                counts["parse_failures"] += 0 if result.parse_ok else 1
            if gold is not None:
                targets.append(gold)
                predictions.append(result.teacher_label or "")
            record = {"id": example["id"], "input": example["input"]}
            if gold is not None:
                record["label"] = gold
            record.update({"rationale": result.rationale, "rationales": list(result.rationales),
                           "teacher_label": result.teacher_label, "teacher_raw": texts,
                           "parse_ok": result.parse_ok, "error": result.error})
            yield record

    paths = export.write_outputs(dataset, split, out, records(), raw)
    accuracy = metric_fn_for(dataset)(targets, predictions)["accuracy"] if targets else None
    return TeacherSummary(
        examples=len(examples), completed=counts["completed"], failed=counts["failed"], not_sent=counts["not_sent"],
        parse_failures=counts["parse_failures"], from_cache=from_cache, requested=progress.requested,
        retries=progress.retries, prompt_tokens=progress.prompt_tokens,
        completion_tokens=progress.completion_tokens, accuracy=accuracy, gold_examples=len(targets),
        seconds=time.monotonic() - start, paths=paths)
