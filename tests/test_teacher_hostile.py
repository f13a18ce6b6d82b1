"""A hostile or broken server and a careless key: bounded waits and sizes, the key never written."""
import asyncio

import pytest
from teacher_helpers import make_data_dir, read_jsonl, run_cli
from teacher_server import Fault, TeacherServer, answer_for, last_question

from distill.teacher import batcher, prompts
from distill.teacher.backends.base import SamplingParams
from distill.teacher.backends.openai_http import OpenAIBackend, response_error
from distill.teacher.cache import CompletionCache
from distill.teacher.progress import Progress
from distill.teacher.ratelimit import RateLimiter

KEY = "sk-hostile-SECRET-0123456789abcdef"


def _pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def _assert_nowhere(secret: str, blobs: list[bytes]) -> None:
    for blob in blobs:
        for piece in _pieces(secret):
            assert piece.encode() not in blob, piece


@pytest.mark.parametrize("header, expected", [(1e9, [300.0]), ("inf", None), ("soon", None), ("-5", [0.0])])
def test_retry_after_is_capped_and_nonsense_is_ignored(tmp_path, header, expected):
    def fault(key, attempt):
        return Fault("429", retry_after=header) if attempt == 0 else None

    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    text = prompts.render_completion(prompts.load_exemplars("svamp"), "Ann has 5 apples.\nHow many?")
    cache = CompletionCache(str(tmp_path / "c.sqlite"))
    with TeacherServer(fault=fault) as server:
        backend = OpenAIBackend(base_url=server.base_url, model="teacher", api_key=None)

        async def main():
            await batcher.run_async([batcher.Job("k", 0)], [text].__getitem__, backend, cache, SamplingParams(),
                                    concurrency=1, limiter=RateLimiter(), policy=batcher.RetryPolicy(base_delay=0.5),
                                    progress=Progress(1, stream=open(tmp_path / "p", "w")), sleep=fake_sleep)
            await backend.aclose()

        asyncio.run(main())
    assert cache.get("k") is not None and len(slept) == 1
    if expected is None:  # our own jittered backoff: base 0.5 s, first attempt
        assert 0.25 <= slept[0] <= 0.5
    else:
        assert slept == expected


def test_a_key_straddling_the_error_cut_is_redacted_before_truncation():
    body = "x" * 290 + f"bad key: Bearer {KEY}"
    error = response_error(401, body, None, "/completions", KEY)
    _assert_nowhere(KEY, [str(error).encode()])


def test_a_key_with_a_control_character_is_refused_without_showing_it(tmp_path):
    data = make_data_dir(tmp_path / "data")
    result = run_cli("--dataset", "svamp", "--split", "test", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                     "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "teacher",
                     "--api-key-env", "TEACHER_TEST_KEY", api_key=KEY + "\r")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "control characters" in lines[0] and "TEACHER_TEST_KEY" in lines[0]
    _assert_nowhere(KEY, [result.stderr.encode(), result.stdout.encode()])
    assert not (tmp_path / "out").exists()


def test_completions_echoing_the_key_and_oversized_replies_never_reach_a_file(tmp_path):
    data = make_data_dir(tmp_path / "data")

    def answer(prompt, sample=0):
        if "has 3 apples" in last_question(prompt):
            return "y" * 300_000  # over --max-response-bytes
        return f"My key is {KEY}. " + answer_for(prompt, sample)

    out = tmp_path / "out"
    with TeacherServer(api_key=KEY, answer=answer) as server:
        result = run_cli("--dataset", "svamp", "--split", "test", "--data-dir", str(data), "--out", str(out),
                         "--backend", "openai", "--base-url", server.base_url, "--model", "teacher",
                         "--api-key-env", "TEACHER_TEST_KEY", "--max-response-bytes", "100000",
                         "--prompt-format", "completion", api_key=KEY)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out / "svamp" / "test.teacher.jsonl")
    assert any("[REDACTED]" in raw for r in records for raw in r["teacher_raw"])
    big = [r for r in records if "larger than 100,000 bytes" in (r.get("error") or "")]
    assert big and all(not r["teacher_raw"] for r in big)
    written = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    _assert_nowhere(KEY, [*written, result.stdout.encode(), result.stderr.encode()])

