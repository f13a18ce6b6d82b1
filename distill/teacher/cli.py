"""`distill teacher`: prompt a teacher LLM for rationales and labels (cached, resumable).

    distill teacher --dataset svamp --split train --backend openai \\
        --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \\
        [--api-key-env OPENAI_API_KEY] [--concurrency 64] [--rpm N] [--tpm N] \\
        [--num-samples 1] [--temperature 0] [--max-tokens 256] [--limit N] --out DIR \\
        [--price-input USD --price-output USD] [--max-cost USD] [--max-tokens-total N]

    distill teacher --backend openai-batch --base-url https://.../v1 ... [--batch-max-wait S]
    distill teacher status --cache DIR/teacher_cache.sqlite

Progress goes to stderr (done/total, req/s, tok/s, errors, ETA); the summary
to stdout. Rerun the same command after any interruption: answers already in
the cache (default DIR/teacher_cache.sqlite) are not requested again, and
batches already submitted are polled, not submitted again. The API key is
read from the environment only and is redacted from every message.
"""
from __future__ import annotations

import argparse
import os
import sys

from distill.errors import UserError
from distill.teacher.accounting import Prices, format_cost
from distill.teacher.backends.base import SamplingParams
from distill.teacher.batcher import RetryPolicy
from distill.teacher.pipeline import TeacherSummary, run_teacher
from distill.teacher.prompts import COMPLETION_STOP
from distill.teacher.ratelimit import RateLimiter
from distill.teacher.redaction import check_api_key, redact


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distill teacher", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--dataset", required=True, help="svamp, cqa, esnli, anli1 or jsonl")
    add("--split", default="train", help="train, valid or test: a split FILE of the data dir (default %(default)s)")
    add("--data-dir", default=None, help="data root (default: $DISTILL_DATA_DIR)")
    add("--out", required=True, help="output root: <out>/<dataset>/<split>.teacher.jsonl, llm/, split file")
    add("--cache", default=None, help="SQLite cache file (default: <out>/teacher_cache.sqlite)")
    add("--backend", choices=("openai", "openai-batch", "hf", "flax"), default="openai",
        help="openai: online requests; openai-batch: the Batch API (files + batches, discounted); "
             "hf, flax: a local model (default %(default)s)")
    add("--base-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    add("--model", required=True, help="served model name (openai) or local checkpoint folder (hf, flax)")
    add("--api-key-env", default="OPENAI_API_KEY",
        help="environment variable holding the API key (default %(default)s)")
    add("--prompt-format", choices=("auto", "chat", "completion"), default="auto",
        help="auto: chat for openai and openai-batch, completion for hf/flax")
    add("--exemplars", default=None, help="few-shot exemplars JSON (default: the shipped file)")
    add("--concurrency", type=int, default=64, help="requests in flight, openai (default %(default)s)")
    add("--rpm", type=float, default=None, help="requests-per-minute limit")
    add("--tpm", type=float, default=None, help="tokens-per-minute limit")
    add("--timeout", type=float, default=120.0, help="seconds per request attempt (default %(default)s)")
    add("--max-attempts", type=int, default=6,
        help="attempts per prompt before it is recorded failed (default %(default)s)")
    add("--backoff", type=float, default=1.0,
        help="first retry delay in seconds, doubling, with jitter (default %(default)s)")
    add("--max-retry-wait", type=float, default=300.0,
        help="cap on a server's Retry-After, in seconds (default %(default)s)")
    add("--max-response-bytes", type=int, default=16 << 20,
        help="largest reply body read from the server (default %(default)s)")
    add("--num-samples", type=int, default=1, help="samples per prompt, majority vote when > 1 (default %(default)s)")
    add("--temperature", type=float, default=0.0, help="default %(default)s (greedy)")
    add("--top-p", type=float, default=1.0, help="default %(default)s")
    add("--max-tokens", type=int, default=256, help="completion tokens per sample (default %(default)s)")
    add("--gold-filter", action="store_true", help="keep only rationales whose label matches gold")
    add("--batch-size", type=int, default=16, help="prompts per generate call, hf and flax (default %(default)s)")
    add("--limit", type=int, default=None, help="only the first N examples of the split")
    cost = p.add_argument_group("accounting and budget")
    cost.add_argument("--price-input", type=float, default=None, help="USD per million prompt tokens")
    cost.add_argument("--price-output", type=float, default=None, help="USD per million completion tokens")
    cost.add_argument("--batch-discount", type=float, default=0.5,
                      help="fraction of the price the openai-batch backend saves (default %(default)s)")
    cost.add_argument("--max-cost", type=float, default=None,
                      help="USD budget for the split's answers (cached ones included); needs the prices")
    cost.add_argument("--max-tokens-total", type=int, default=None,
                      help="prompt + completion token budget for the split's answers (cached ones included)")
    batch = p.add_argument_group("openai-batch")
    batch.add_argument("--batch-max-requests", type=int, default=50_000,
                       help="requests per input file (default %(default)s)")
    batch.add_argument("--batch-max-bytes", type=int, default=200_000_000,
                       help="bytes per input file (default %(default)s)")
    batch.add_argument("--batch-poll-interval", type=float, default=15.0,
                       help="seconds between the first polls, doubling (default %(default)s)")
    batch.add_argument("--batch-max-poll-interval", type=float, default=300.0,
                       help="longest wait between polls (default %(default)s)")
    batch.add_argument("--batch-max-wait", type=float, default=25 * 3600.0,
                       help="seconds this run waits for its batches; rerun to resume (default %(default)s)")
    batch.add_argument("--batch-max-rounds", type=int, default=3,
                       help="submissions per prompt in one run when batches expire, fail or are cancelled "
                            "(default %(default)s)")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("concurrency", "num_samples", "max_tokens", "max_attempts", "batch_size", "batch_max_requests",
                 "batch_max_bytes", "batch_max_rounds", "max_response_bytes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("rpm", "tpm"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name} must be > 0, got {getattr(args, name)}")
    for name in ("timeout", "batch_poll_interval", "batch_max_poll_interval", "batch_max_wait", "max_retry_wait"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0 seconds, got {getattr(args, name)}")
    for name in ("price_input", "price_output", "max_cost"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0 USD, got {getattr(args, name)}")
    if args.max_tokens_total is not None and args.max_tokens_total < 1:
        raise UserError(f"--max-tokens-total must be >= 1, got {args.max_tokens_total}")
    if not 0 <= args.batch_discount <= 1:
        raise UserError(f"--batch-discount is a fraction in [0, 1] (0.5: half price), got {args.batch_discount}")
    if args.max_cost is not None and args.price_input is None and args.price_output is None:
        raise UserError("--max-cost needs prices: pass --price-input and --price-output (USD per million tokens)")
    if args.num_samples > 1 and args.temperature == 0:
        raise UserError("--num-samples > 1 needs --temperature > 0 (greedy samples are all the same)")


def _backend(args: argparse.Namespace, api_key: str | None, policy: RetryPolicy):
    if args.backend in ("openai", "openai-batch") and not args.base_url:
        raise UserError(f"--backend {args.backend} needs --base-url, e.g. http://127.0.0.1:8000/v1")
    if args.backend == "openai":
        from distill.teacher.backends.openai_http import OpenAIBackend
        return OpenAIBackend(base_url=args.base_url, model=args.model, api_key=api_key,
                             max_response_bytes=args.max_response_bytes)
    if args.backend == "openai-batch":
        from distill.teacher.backends.openai_batch import OpenAIBatchBackend
        from distill.teacher.batch_runner import BatchSettings
        settings = BatchSettings(max_requests_per_file=args.batch_max_requests,
                                 max_bytes_per_file=args.batch_max_bytes, poll_interval=args.batch_poll_interval,
                                 max_poll_interval=args.batch_max_poll_interval, max_wait=args.batch_max_wait,
                                 max_rounds=args.batch_max_rounds)
        return OpenAIBatchBackend(base_url=args.base_url, model=args.model, api_key=api_key, settings=settings,
                                  policy=policy)
    if args.backend == "hf":
        from distill.teacher.backends.hf_local import HFBackend
        return HFBackend(args.model, batch_size=args.batch_size)
    from distill.teacher.backends.flax_t5 import FlaxT5Backend
    return FlaxT5Backend(args.model, batch_size=args.batch_size)


def format_summary(summary: TeacherSummary) -> str:
    run, total = summary.run_usage, summary.total_usage
    accuracy = (f"{100 * summary.accuracy:.2f}% of {summary.gold_examples} gold-labelled examples"
                if summary.accuracy is not None else "n/a (no gold labels)")
    lines = [
        f"examples:        {summary.examples}",
        f"completed:       {summary.completed} "
        f"({summary.from_cache} prompts from cache, {summary.requested} requested now)",
        f"failed:          {summary.failed}",
        *([f"not answered:    {summary.not_sent} (not sent, or still in a batch)"] if summary.not_sent else []),
        f"parse failures:  {summary.parse_failures}",
        f"retries:         {summary.retries}",
        f"teacher accuracy: {accuracy}",
        f"tokens used:     {run.tokens} ({run.prompt_tokens} prompt + {run.completion_tokens} completion, "
        f"this run); {total.tokens} ({total.prompt_tokens} + {total.completion_tokens}) for all "
        f"{total.answers} answers of this split",
        f"estimated cost:  {format_cost(run.cost)}" + ("" if run.cost is None else
                                                      f" this run, {format_cost(total.cost)} in total"),
        f"time:            {summary.seconds:.1f}s",
        f"wrote:           {summary.paths['teacher']}",
        *(f"note:            {note}" for note in summary.notes),
    ]
    if summary.budget_stop:
        lines.append(summary.budget_stop)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        from distill.teacher.status import main as status_main
        return status_main(argv[1:])
    args = _parser().parse_args(argv)
    _check(args)
    api_key = check_api_key(os.environ.get(args.api_key_env) or None, args.api_key_env)
    prompt_format = args.prompt_format
    if prompt_format == "auto":
        prompt_format = "chat" if args.backend in ("openai", "openai-batch") else "completion"
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            n=args.num_samples, stop=COMPLETION_STOP if prompt_format == "completion" else ())
    policy = RetryPolicy(max_attempts=args.max_attempts, timeout=args.timeout, base_delay=args.backoff,
                         max_retry_wait=args.max_retry_wait)
    try:
        summary = run_teacher(
            dataset=args.dataset, split=args.split, out=args.out, backend=_backend(args, api_key, policy),
            data_dir=args.data_dir, cache_path=args.cache, params=params, prompt_format=prompt_format,
            exemplars_path=args.exemplars, limit=args.limit, concurrency=args.concurrency,
            limiter=RateLimiter(rpm=args.rpm, tpm=args.tpm), policy=policy,
            gold_filter=args.gold_filter, secret=api_key,
            prices=Prices(args.price_input, args.price_output, args.batch_discount),
            max_cost=args.max_cost, max_tokens_total=args.max_tokens_total)
    except UserError as err:
        raise UserError(redact(str(err), api_key)) from None
    print(redact(format_summary(summary), api_key))
    return 0


if __name__ == "__main__":
    from distill import cli  # the package's one error boundary (distill/cli.py run_main)

    sys.exit(cli.main(["teacher", *sys.argv[1:]]))
