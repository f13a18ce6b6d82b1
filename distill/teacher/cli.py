"""`distill teacher`: prompt a teacher LLM for rationales and labels (cached, resumable).

    distill teacher --dataset svamp --split train --backend openai \\
        --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \\
        [--api-key-env OPENAI_API_KEY] [--concurrency 64] [--rpm N] [--tpm N] \\
        [--num-samples 1] [--temperature 0] [--max-tokens 256] [--limit N] --out DIR

Progress goes to stderr (done/total, req/s, tok/s, errors, ETA); the summary
to stdout. Rerun the same command after any interruption: answers already in
the cache (default DIR/teacher_cache.sqlite) are not requested again. The
API key is read from the environment only and is redacted from every message.
"""
from __future__ import annotations

import argparse
import os
import sys

from distill.errors import UserError
from distill.teacher.backends.base import SamplingParams
from distill.teacher.batcher import RetryPolicy
from distill.teacher.pipeline import TeacherSummary, run_teacher
from distill.teacher.prompts import COMPLETION_STOP
from distill.teacher.ratelimit import RateLimiter
from distill.teacher.redaction import redact


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distill teacher", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--dataset", required=True, help="svamp, cqa, esnli, anli1 or jsonl")
    add("--split", default="train", help="train, valid or test: a split FILE of the data dir (default %(default)s)")
    add("--data-dir", default=None, help="data root (default: $DISTILL_DATA_DIR)")
    add("--out", required=True, help="output root: <out>/<dataset>/<split>.teacher.jsonl, llm/, split file")
    add("--cache", default=None, help="SQLite cache file (default: <out>/teacher_cache.sqlite)")
    add("--backend", choices=("openai", "hf", "flax"), default="openai", help="default %(default)s")
    add("--base-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    add("--model", required=True, help="served model name (openai) or local checkpoint folder (hf, flax)")
    add("--api-key-env", default="OPENAI_API_KEY",
        help="environment variable holding the API key (default %(default)s)")
    add("--prompt-format", choices=("auto", "chat", "completion"), default="auto",
        help="auto: chat for openai, completion for hf/flax")
    add("--exemplars", default=None, help="few-shot exemplars JSON (default: the shipped file)")
    add("--concurrency", type=int, default=64, help="requests in flight, openai (default %(default)s)")
    add("--rpm", type=float, default=None, help="requests-per-minute limit")
    add("--tpm", type=float, default=None, help="tokens-per-minute limit")
    add("--timeout", type=float, default=120.0, help="seconds per request attempt (default %(default)s)")
    add("--max-attempts", type=int, default=6,
        help="attempts per prompt before it is recorded failed (default %(default)s)")
    add("--backoff", type=float, default=1.0,
        help="first retry delay in seconds, doubling, with jitter (default %(default)s)")
    add("--num-samples", type=int, default=1, help="samples per prompt, majority vote when > 1 (default %(default)s)")
    add("--temperature", type=float, default=0.0, help="default %(default)s (greedy)")
    add("--top-p", type=float, default=1.0, help="default %(default)s")
    add("--max-tokens", type=int, default=256, help="completion tokens per sample (default %(default)s)")
    add("--gold-filter", action="store_true", help="keep only rationales whose label matches gold")
    add("--batch-size", type=int, default=16, help="prompts per generate call, hf and flax (default %(default)s)")
    add("--limit", type=int, default=None, help="only the first N examples of the split")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("concurrency", "num_samples", "max_tokens", "max_attempts", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("rpm", "tpm"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.num_samples > 1 and args.temperature == 0:
        raise UserError("--num-samples > 1 needs --temperature > 0 (greedy samples are all the same)")


def _backend(args: argparse.Namespace, api_key: str | None):
    if args.backend == "openai":
        if not args.base_url:
            raise UserError("--backend openai needs --base-url, e.g. http://127.0.0.1:8000/v1")
        from distill.teacher.backends.openai_http import OpenAIBackend
        return OpenAIBackend(base_url=args.base_url, model=args.model, api_key=api_key)
    if args.backend == "hf":
        from distill.teacher.backends.hf_local import HFBackend
        return HFBackend(args.model, batch_size=args.batch_size)
    from distill.teacher.backends.flax_t5 import FlaxT5Backend
    return FlaxT5Backend(args.model, batch_size=args.batch_size)


def format_summary(summary: TeacherSummary) -> str:
    accuracy = (f"{100 * summary.accuracy:.2f}% of {summary.gold_examples} gold-labelled examples"
                if summary.accuracy is not None else "n/a (no gold labels)")
    lines = [
        f"examples:        {summary.examples}",
        f"completed:       {summary.completed} "
        f"({summary.from_cache} prompts from cache, {summary.requested} requested now)",
        f"failed:          {summary.failed}",
        f"parse failures:  {summary.parse_failures}",
        f"retries:         {summary.retries}",
        f"teacher accuracy: {accuracy}",
        f"tokens used:     {summary.prompt_tokens + summary.completion_tokens} "
        f"({summary.prompt_tokens} prompt + {summary.completion_tokens} completion, this run)",
        f"time:            {summary.seconds:.1f}s",
        f"wrote:           {summary.paths['teacher']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    api_key = os.environ.get(args.api_key_env) or None
    prompt_format = args.prompt_format
    if prompt_format == "auto":
        prompt_format = "chat" if args.backend == "openai" else "completion"
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            n=args.num_samples, stop=COMPLETION_STOP if prompt_format == "completion" else ())
    try:
        summary = run_teacher(
            dataset=args.dataset, split=args.split, out=args.out, backend=_backend(args, api_key),
            data_dir=args.data_dir, cache_path=args.cache, params=params, prompt_format=prompt_format,
            exemplars_path=args.exemplars, limit=args.limit, concurrency=args.concurrency,
            limiter=RateLimiter(rpm=args.rpm, tpm=args.tpm),
            policy=RetryPolicy(max_attempts=args.max_attempts, timeout=args.timeout, base_delay=args.backoff),
            gold_filter=args.gold_filter, secret=api_key)
    except UserError as err:
        raise UserError(redact(str(err), api_key)) from None
    print(redact(format_summary(summary), api_key))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
