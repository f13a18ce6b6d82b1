"""The OpenAI-compatible backend against a real loopback server with injected faults.

Every prompt must end stored or recorded failed, retries must happen and stop
at the bound, Retry-After must be honoured, the RPM bucket must hold on the
server's own clock, and the API key must never be written or printed.
"""
import asyncio

from teacher_helpers import make_data_dir, read_jsonl, run_cli
from teacher_server import Fault, TeacherServer, hashed_faults, prompt_key

from distill.teacher import batcher, prompts
from distill.teacher.backends.base import SamplingParams
from distill.teacher.backends.openai_http import OpenAIBackend
from distill.teacher.cache import CompletionCache
from distill.teacher.pipeline import run_teacher
from distill.teacher.progress import Progress
from distill.teacher.ratelimit import RateLimiter


def _server_keys(dataset, inputs, render=prompts.render_completion):
    prompt_set = prompts.load_exemplars(dataset)
    return [prompt_key(render(prompt_set, text)) for text in inputs]


def test_every_prompt_ends_stored_or_failed_with_bounded_retries(tmp_path):
    data = make_data_dir(tmp_path / "data")
    fault = hashed_faults(faulty_every=2, failing_every=5, retry_after=0.01, slow_seconds=3.0)
    with TeacherServer(fault=fault) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="teacher", api_key=None)
        summary = run_teacher(dataset="svamp", split="test", data_dir=str(data), out=str(tmp_path / "out"),
                              backend=backend, concurrency=8, progress_stream=open(tmp_path / "progress", "w"),
                              policy=batcher.RetryPolicy(max_attempts=3, timeout=1.0, base_delay=0.01))
    records = read_jsonl(tmp_path / "out" / "svamp" / "test.teacher.jsonl")
    keys = _server_keys("svamp", [r["input"] for r in records])
    kinds = {"failing": 0, "faulty": 0, "clean": 0}
    for record, key in zip(records, keys):
        h = int(key[:12], 16)
        if h % 5 == 1:  # a 500 on every attempt: tried exactly max_attempts times, then recorded
            kinds["failing"] += 1
            assert server.requests[key] == 3
            assert record["teacher_raw"] == [] and record["error"].startswith("HTTP 500")
        else:  # answered: once after one fault, or at once
            kinds["faulty" if h % 2 == 0 else "clean"] += 1
            assert server.requests[key] == (2 if h % 2 == 0 else 1)
            assert len(record["teacher_raw"]) == 1 and server.answers[key] == 1
            assert record["parse_ok"] == (record["error"] is None)
    assert min(kinds.values()) >= 2, kinds  # the schedule exercised every path
    assert summary.completed + summary.failed == len(records) == 20
    assert summary.failed == kinds["failing"]
    assert summary.retries == kinds["faulty"] + 2 * kinds["failing"]
    assert "errors" in (tmp_path / "progress").read_text()


def test_retry_after_is_honoured_and_non_retryable_errors_are_not_retried(tmp_path):
    def fault(key, attempt):
        if "7 apples" in PROMPTS[key]:
            return Fault("429", retry_after=7.0) if attempt == 0 else None
        return None

    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    prompt_set = prompts.load_exemplars("svamp")
    texts = [prompts.render_completion(prompt_set, f"Ann has {n} apples.\nHow many?") for n in (5, 7)]
    PROMPTS = {prompt_key(t): t for t in texts}
    cache = CompletionCache(str(tmp_path / "c.sqlite"))
    with TeacherServer(fault=fault) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="teacher", api_key=None)
        jobs = [batcher.Job(f"k{i}", i) for i in range(2)]

        async def main():
            await batcher.run_async(jobs, texts.__getitem__, backend, cache, SamplingParams(), concurrency=2,
                                    limiter=RateLimiter(), policy=batcher.RetryPolicy(base_delay=0.5),
                                    progress=Progress(2, stream=open(tmp_path / "p", "w")), sleep=fake_sleep)
            await backend.aclose()

        asyncio.run(main())
    assert slept == [7.0]
    assert cache.get("k0") is not None and cache.get("k1") is not None

    # A 404 (wrong URL) is not worth retrying: one request, recorded failed.
    with TeacherServer() as server:
        backend = OpenAIBackend(base_url=server.base_url + "/wrong", model="teacher", api_key=None)
        cache2 = CompletionCache(str(tmp_path / "c2.sqlite"))

        async def main2():
            await batcher.run_async([batcher.Job("k", 0)], texts.__getitem__, backend, cache2, SamplingParams(),
                                    concurrency=1, limiter=RateLimiter(), policy=batcher.RetryPolicy(),
                                    progress=Progress(1, stream=open(tmp_path / "p2", "w")), sleep=fake_sleep)
            await backend.aclose()

        asyncio.run(main2())
        assert sum(server.requests.values()) == 1
    assert cache2.failure("k").startswith("HTTP 404")


def test_rpm_limit_holds_on_the_servers_clock(tmp_path):
    data = make_data_dir(tmp_path / "data")
    with TeacherServer() as server:
        backend = OpenAIBackend(base_url=server.base_url, model="teacher", api_key=None)
        run_teacher(dataset="svamp", split="test", data_dir=str(data), out=str(tmp_path / "out"), backend=backend,
                    limit=8, concurrency=8, limiter=RateLimiter(rpm=120), progress_stream=open(tmp_path / "p", "w"))
        stamps = sorted(server.timestamps)
    assert len(stamps) == 8
    # 120 rpm = 2/s with a burst of 2: the limiter grants at 0, 0, 0.5, 1.0, ..., 3.0 s. Counted on the
    # server's clock, any 1 s window holds at most 2 + 2 requests (+1 for up to 0.5 s of network jitter),
    # and the 8 cannot arrive within 2 s. (Upper bounds on pace only: no speed is asserted.)
    for i in range(len(stamps)):
        assert sum(1 for t in stamps[i:] if t - stamps[i] < 1.0) <= 5
    assert stamps[-1] - stamps[0] >= 2.0


def test_api_key_never_reaches_cache_exports_or_output(tmp_path):
    data = make_data_dir(tmp_path / "data")
    key = "sk-test-SECRET-0123456789"
    out = tmp_path / "out"
    with TeacherServer(api_key=key) as server:
        good = run_cli("--dataset", "cqa", "--split", "test", "--data-dir", str(data), "--out", str(out),
                       "--backend", "openai", "--base-url", server.base_url, "--model", "teacher",
                       "--api-key-env", "TEACHER_TEST_KEY", "--concurrency", "4", api_key=key)
        assert good.returncode == 0, good.stderr
        assert "completed:       12" in good.stdout and "teacher accuracy:" in good.stdout
        # A wrong key: the server echoes it in its 401 body; the client must redact it.
        wrong = "sk-wrong-KEY-9876543210"
        bad = run_cli("--dataset", "svamp", "--split", "test", "--data-dir", str(data), "--out", str(out),
                      "--backend", "openai", "--base-url", server.base_url, "--model", "teacher",
                      "--api-key-env", "TEACHER_TEST_KEY", api_key=wrong)
        assert bad.returncode == 0, bad.stderr
        assert "failed:          20" in bad.stdout
        assert all(n == 1 for n in list(server.requests.values())[-20:])  # 401 is not retried
    errors = {r["error"] for r in read_jsonl(out / "svamp" / "test.teacher.jsonl")}
    assert len(errors) == 1
    error = errors.pop()
    assert error.startswith("HTTP 401") and "[REDACTED]" in error
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"[REDACTED]" in written and b"HTTP 401" in written
    for secret in (key, wrong):
        assert secret.encode() not in written
        for stream in (good.stdout, good.stderr, bad.stdout, bad.stderr):
            assert secret not in stream
    # The chat endpoint served the default (auto) format.
    assert all(record["teacher_raw"] for record in read_jsonl(out / "cqa" / "test.teacher.jsonl"))
