"""`distill serve` throughput and latency, with and without dynamic batching, next to offline decoding.

Starts `distill serve` twice on the same checkpoint (the default --max-batch-size, then
--max-batch-size 1: every request decoded alone), and at each concurrency level sends --requests
completion requests (greedy, the same prompts in the same order) from an asyncio client, keeping
that many in flight. Reports requests/s, p50/p99 latency, the mean decoded batch size and how much
of the wall time the decoder thread was decoding (both from the server's /metrics: a busy decoder
means the model is the limit, an idle one means HTTP and the client are). Then times
`distill.predict.decode_texts` on the same inputs in this process: the offline ceiling, with no
HTTP and perfect batches. The last line puts the batched/unbatched ratio at the top concurrency
next to its bound, offline/unbatched: what batching can buy is what the decoder gains from
batches, which depends on the model and the machine.

    python scripts/bench_serve.py                       # a tiny random T5 (tests/serve_helpers.py)
    python scripts/bench_serve.py --checkpoint runs/svamp_tiny --requests 512 --concurrency 1,16,64,256

Start-up compilation is not timed (the server warms up before it listens; a few untimed requests
go first). Run it on an idle machine: client, server and offline decoding share the CPUs.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # serve_helpers: the tiny student and the server process

from serve_helpers import ServeProcess, make_student  # noqa: E402

from distill.xla_flags import single_threaded_eigen  # noqa: E402

MODEL = "bench"
OFFLINE_SETUP = "decode_texts (offline)"
OFFLINE_REPEATS = 5
SENTENCES = ["the quick brown fox jumps over the lazy dog", "a man is playing a guitar on the street",
             "Ann has 3 apples and buys 4 more. How many apples does she have?",
             "she sold four cups of lemonade and two cookies", "the lazy dog", "four cups"]


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help="anything `distill serve` accepts (default: a tiny random T5 in a temp folder)")
    parser.add_argument("--requests", type=int, default=256, help="timed requests per concurrency level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma list of requests kept in flight")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the batched server's --max-batch-size")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-input-tokens", type=int, default=128)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default=None,
                        help="`distill serve --matmul-dtype` for both servers and the offline decoding")
    args = parser.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",")]
    if args.requests < 1 or min(args.levels) < 1:
        parser.error("--requests and every --concurrency level must be >= 1")
    return args


def _prompts(n: int) -> list[str]:
    """n prompts of varied length (1 or 2 sentences), fixed order."""
    return [" ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 2)) for i in range(n)]


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """One keep-alive HTTP/1.1 exchange: the response body (the server answers with Content-Length)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line[:15].lower() == b"content-length:")
    body = await reader.readexactly(length)
    if status != b"200":
        raise RuntimeError(f"HTTP {status.decode()} from the server: {body[:200]!r}")
    return body


async def _load(url: str, prompts: list[str], concurrency: int) -> tuple[float, list[float]]:
    """(wall seconds, per-request latencies) for all prompts with `concurrency` requests in flight.

    The client is a bare asyncio HTTP/1.1 loop over `concurrency` keep-alive connections with the
    requests encoded up front: the client shares the CPUs with the server, and a general-purpose
    client (httpx) spends milliseconds per request at this concurrency, which would cap the figure
    at the client's rate rather than the server's. Every answer is parsed and checked for a choice.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    requests = []
    for prompt in prompts:
        body = json.dumps({"model": MODEL, "prompt": prompt}).encode()
        requests.append(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    pending = collections.deque(requests)
    latencies: list[float] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while pending:
                request = pending.popleft()
                started = time.perf_counter()
                answer = json.loads(await _post(reader, writer, request))
                latencies.append(time.perf_counter() - started)
                if len(answer["choices"]) != 1:
                    raise RuntimeError(f"expected one choice, got {answer}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
    return time.perf_counter() - started, latencies


def _serve_setup(max_batch_size: int) -> str:
    """A server's row label in the table (and the key `_summary` finds it by)."""
    return f"serve --max-batch-size {max_batch_size}"


def _batcher_stats(url: str) -> dict:
    import httpx

    return httpx.get(url + "/metrics", timeout=60).json()["batcher"]


def _serve_rows(checkpoint: pathlib.Path, args, max_batch_size: int, prompts: list[str], log_dir: pathlib.Path):
    flags = ["--model-name", MODEL, "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
             "--max-new-tokens", str(args.max_new_tokens), "--max-input-tokens", str(args.max_input_tokens),
             "--max-in-flight", str(max(args.levels) + 1),
             *(["--matmul-dtype", args.matmul_dtype] if args.matmul_dtype else [])]
    rows = []
    with ServeProcess(checkpoint, flags, log_dir / f"serve_b{max_batch_size}.log", ready_timeout=1800) as server:
        asyncio.run(_load(server.url, prompts[:4], 4))  # untimed: connections, first batches
        for concurrency in args.levels:
            before = _batcher_stats(server.url)
            wall, latencies = asyncio.run(_load(server.url, prompts, concurrency))
            after = _batcher_stats(server.url)
            mean_batch = (after["rows"] - before["rows"]) / max(1, after["batches"] - before["batches"])
            busy = (after["decode_seconds"] - before["decode_seconds"]) / wall
            rows.append((_serve_setup(max_batch_size), concurrency, len(prompts) / wall,
                         1000 * np.percentile(latencies, 50), 1000 * np.percentile(latencies, 99), mean_batch, busy))
        if server.terminate() != 0:
            raise RuntimeError(f"distill serve did not exit cleanly; see {server.log}")
    return rows


def _offline_row(checkpoint: pathlib.Path, args, prompts: list[str]):
    from distill import predict
    from distill.run_dir import load_trained

    trained = load_trained(str(checkpoint), require_tokenizer=True)
    config = predict.with_matmul_dtype(trained.config, args.matmul_dtype)
    texts = [trained.task_prefixes["label"] + p for p in prompts]
    options = dict(batch_size=args.max_batch_size, max_input_length=args.max_input_tokens,
                   max_decode_length=args.max_new_tokens)
    tokenizer = trained.tokenizer()
    predict.decode_texts(config, trained.params, tokenizer, texts, **options)  # compile
    walls = []
    for _ in range(OFFLINE_REPEATS):  # one pass is a fraction of a second: take the median of a few
        started = time.perf_counter()
        predict.decode_texts(config, trained.params, tokenizer, texts, **options)
        walls.append(time.perf_counter() - started)
    wall = float(np.median(walls))
    batches = -(-len(texts) // args.max_batch_size)
    return (OFFLINE_SETUP, "-", len(texts) / wall, None, None, len(texts) / batches, None)


def main(argv=None) -> int:
    args = _parse_args(argv)
    single_threaded_eigen()  # offline decoding here runs as `distill serve` and `distill predict` do
    prompts = _prompts(args.requests)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as scratch:
        scratch = pathlib.Path(scratch)
        checkpoint = pathlib.Path(args.checkpoint) if args.checkpoint else make_student(scratch / "student")
        rows = []
        try:
            for max_batch_size in dict.fromkeys((args.max_batch_size, 1)):
                rows += _serve_rows(checkpoint, args, max_batch_size, prompts, scratch)
        except RuntimeError as err:  # a refused request (e.g. prompts over --max-input-tokens), a server that failed
            print(f"error: {err}", file=sys.stderr)
            return 2
        rows.append(_offline_row(checkpoint, args, prompts))
    print(f"{args.requests} requests per level, greedy, {args.max_new_tokens} new tokens, "
          f"max {args.max_input_tokens} input tokens, checkpoint {args.checkpoint or 'tiny random T5'}, "
          f"matmuls in {args.matmul_dtype or 'the checkpoint dtype'}")
    print(f"{'setup':<28} {'concurrency':>11} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'mean batch':>10} {'decoder busy':>12}")
    for setup, concurrency, rate, p50, p99, batch, busy in rows:
        p50, p99 = ("-" if v is None else f"{v:.1f}" for v in (p50, p99))
        busy = "-" if busy is None else f"{100 * busy:.0f}%"
        print(f"{setup:<28} {concurrency!s:>11} {rate:>9.1f} {p50:>9} {p99:>9} {batch:>10.1f} {busy:>12}")
    if args.max_batch_size > 1:
        print(_summary(rows, args.max_batch_size, max(args.levels)))
    return 0


def _summary(rows, max_batch_size: int, concurrency: int) -> str:
    """The batching gain at the top concurrency, next to its bound: offline decoding over unbatched serving.

    Offline decoding is the server's decoder with perfect batches and no HTTP, so no server can beat
    offline / unbatched; the fraction of it reached says how much the serving path loses.
    """
    rate = {(setup, level): value for setup, level, value, *_ in rows}
    batched = rate[(_serve_setup(max_batch_size), concurrency)]
    unbatched = rate[(_serve_setup(1), concurrency)]
    offline = rate[(OFFLINE_SETUP, "-")]
    return (f"at concurrency {concurrency}: batched {batched:.1f} req/s = {batched / unbatched:.1f}x unbatched "
            f"(the bound, offline / unbatched: {offline / unbatched:.1f}x) and {100 * batched / offline:.0f}% of offline")


if __name__ == "__main__":
    sys.exit(main())
