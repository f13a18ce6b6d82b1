"""Teacher throughput against a loopback OpenAI-compatible server with a fixed latency.

    python scripts/bench_teacher.py [--latency 0.2] [--concurrency 1,16,64,256] [--rounds 20]

With every request taking `latency` seconds on the server, the ideal rate at
concurrency c is c / latency requests per second; the target is >= 90% of it
at c = 256. Each measurement sends rounds * c distinct few-shot svamp prompts
through the real path (render, rate limiter, the HTTP/1.1 client, retries
wrapper, SQLite commit per answer) on the event loop `distill teacher` uses.
The server (tests/teacher_server.py) runs in a child process so it does not
share the client's interpreter lock; it shares the CPUs, and its own CPU a
request is printed too.

Why 20 rounds: all c workers start at once, so the first requests leave and
their answers come back in a burst that the client and server each take
c x (their CPU a request) to work through. At c = 256 that burst costs about
0.1 s whatever the rounds; 5 rounds (1 s) would mostly measure it, 20 rounds
(4 s) measure the rate. `--rounds 5` shows the short figure.
Also prints the cache's cost per request (one committed put, one get).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from distill.teacher import batcher, prompts  # noqa: E402
from distill.teacher.backends.base import SamplingParams  # noqa: E402
from distill.teacher.cache import Completion, CompletionCache, cache_key  # noqa: E402
from distill.teacher.pipeline import run_coroutine  # noqa: E402
from distill.teacher.progress import Progress  # noqa: E402
from distill.teacher.ratelimit import RateLimiter  # noqa: E402


def _serve(latency: float, conn) -> None:
    from teacher_server import TeacherServer

    with TeacherServer(latency=latency) as server:
        conn.send(server.base_url)
        conn.recv()  # block until the parent says stop
        conn.send((time.process_time(), sum(server.requests.values())))


def measure(base_url: str, concurrency: int, count: int, offset: int, folder: str) -> tuple[float, float]:
    """(requests per second, client CPU milliseconds per request) for `count` fresh prompts.

    As in `run_teacher`, keys are computed before the clock starts and each
    prompt is rendered again when it is sent (inside the measurement).
    """
    from distill.teacher.backends.openai_http import OpenAIBackend

    prompt_set = prompts.load_exemplars("svamp")
    inputs = [f"Ann has {offset + i} apples and buys 3 more.\nHow many apples?" for i in range(count)]

    def render(index: int) -> str:
        return prompts.render_completion(prompt_set, inputs[index])

    cache = CompletionCache(os.path.join(folder, f"bench_{concurrency}_{offset}.sqlite"))
    params = SamplingParams(max_tokens=64)
    jobs = [batcher.Job(cache_key(backend="openai", model="bench", prompt=render(i), params=params.as_dict()), i)
            for i in range(count)]

    async def run() -> tuple[float, float]:
        backend = OpenAIBackend(base_url=base_url, model="bench", api_key=None)
        # Warm the connection pool so the figure is steady-state throughput.
        await asyncio.gather(*(backend.generate(render(i % count), params) for i in range(concurrency)))
        start, cpu = time.perf_counter(), time.process_time()
        await batcher.run_async(jobs, render, backend, cache, params, concurrency=concurrency,
                                limiter=RateLimiter(), policy=batcher.RetryPolicy(timeout=30),
                                progress=Progress(count, stream=open(os.devnull, "w")))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        await backend.aclose()
        return elapsed, cpu

    elapsed, cpu = run_coroutine(run())
    assert cache.count() == count, "every request must be answered"
    cache.close()
    return count / elapsed, cpu / count * 1000


def cache_overhead(folder: str, count: int = 2000) -> tuple[float, float]:
    """Microseconds per committed put and per get of a typical completion."""
    cache = CompletionCache(os.path.join(folder, "overhead.sqlite"))
    text = "Ann has 7 apples and buys 3 more. So she has 7 + 3 = 10 apples. The answer is (7 + 3)." * 2
    keys = [cache_key(backend="openai", model="m", prompt=str(i), params={}) for i in range(count)]
    start = time.perf_counter()
    for key in keys:
        cache.put(key, Completion((text,), 900, 40))
    put_us = (time.perf_counter() - start) / count * 1e6
    start = time.perf_counter()
    for key in keys:
        cache.get(key)
    get_us = (time.perf_counter() - start) / count * 1e6
    cache.close()
    return put_us, get_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--rounds", type=int, default=20, help="requests per measurement = rounds * concurrency")
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(args.latency, child), daemon=True)
    server.start()
    base_url = parent.recv()
    print(f"loopback server latency {args.latency * 1000:.0f} ms, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    offset = 0
    with tempfile.TemporaryDirectory() as folder:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            count = max(10, args.rounds * concurrency)
            rate, cpu_ms = measure(base_url, concurrency, count, offset, folder)
            offset += count + concurrency
            ideal = concurrency / args.latency
            print(f"concurrency {concurrency:>4}: {rate:8.1f} req/s  ideal {ideal:8.1f} req/s  "
                  f"{100 * rate / ideal:5.1f}% of ideal  (client CPU {cpu_ms:.2f} ms/request, {count} requests)")
        put_us, get_us = cache_overhead(folder)
        print(f"cache overhead per request: put+commit {put_us:.0f} us, get {get_us:.0f} us")
    parent.send("stop")
    server_cpu, server_requests = parent.recv()
    print(f"server CPU {server_cpu / server_requests * 1000:.2f} ms/request ({server_requests} requests, "
          "the loopback fixture's own cost on the same CPUs)")
    server.join(timeout=5)


if __name__ == "__main__":
    main()
