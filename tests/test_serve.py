"""`distill serve` judged by the official `openai` client: outputs, batching, errors, round trip, shutdown.

One server subprocess (a tiny random T5 student, rows {1, 2, 4} x input lengths {16, 32, 64} compiled
at start-up) serves most tests; the expected outputs come from `distill.predict.decode_texts` on
the same checkpoint in this process. Tests that must hold requests in flight (429, graceful
shutdown) run the same ASGI app in a thread with a fake decoder whose gate the test opens, so
nothing here depends on timing.
"""
import asyncio
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_helpers import GatedDecoder, InProcessServer, ServeProcess, make_student, wait_until  # noqa: E402
from teacher_helpers import make_data_dir  # noqa: E402

from distill import predict  # noqa: E402
from distill.run_dir import load_trained  # noqa: E402

KEY_ENV = "DISTILL_SERVE_TEST_KEY"
KEY = "sk-test-0123456789abcdef"
MODEL = "student"
NEW_TOKENS = 8
MAX_INPUT = 64
BODY_LIMIT = 65536
SERVER_ARGS = ["--model-name", MODEL, "--api-key-env", KEY_ENV, "--max-batch-size", "4", "--max-wait-ms", "20",
               "--max-input-tokens", str(MAX_INPUT), "--max-new-tokens", str(NEW_TOKENS), "--max-in-flight", "128",
               "--max-body-bytes", str(BODY_LIMIT)]
PROMPTS = ["the quick brown fox", "a man is playing", "she sold four cups of lemonade and two cookies",
           "how many apples", "the lazy dog", "four cups", "a guitar on the street", "she has"]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_student(tmp_path_factory.mktemp("serve") / "student")


@pytest.fixture(scope="module")
def server(student, tmp_path_factory):
    """Started first (it compiles while this process computes the expected outputs)."""
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    with ServeProcess(student, SERVER_ARGS, log, env={KEY_ENV: KEY}) as process:
        yield process


@pytest.fixture(scope="module")
def expected(server, student):
    """prompt -> (decode_texts's greedy text, generated ids before EOS, prompt tokens) with the [label] prefix."""
    trained = load_trained(str(student))
    tokenizer = trained.tokenizer()
    texts = ["[label] " + p for p in PROMPTS]
    outputs = predict.decode_texts(trained.config, trained.params, tokenizer, texts, batch_size=8,
                                   max_input_length=MAX_INPUT, max_decode_length=NEW_TOKENS)
    encoded = [tokenizer.encode(t) + [1] for t in texts]
    batch = np.zeros((8, MAX_INPUT), np.int32)
    for row, ids in enumerate(encoded):
        batch[row, :len(ids)] = ids
    tokens = np.asarray(predict.predict_batch(trained.config, trained.params, batch, max_decode_length=NEW_TOKENS))
    generated = [row[:row.index(1)] if 1 in row else row for row in tokens.tolist()]
    assert any(len(g) < NEW_TOKENS for g in generated) and any(outputs), "the fixture model should vary"
    return {p: (out, ids, len(enc)) for p, out, ids, enc in zip(PROMPTS, outputs, generated, encoded)}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _reason(ids, max_tokens=NEW_TOKENS):
    return "stop" if len(ids) < max_tokens else "length"


def test_health_and_models(server, client):
    assert httpx.get(server.url + "/health", timeout=30).json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completions_match_decode_texts_with_usage(client, expected):
    prompts = PROMPTS[:3]
    response = client.completions.create(model=MODEL, prompt=prompts)
    assert [c.text for c in response.choices] == [expected[p][0] for p in prompts]
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.finish_reason for c in response.choices] == [_reason(expected[p][1]) for p in prompts]
    assert response.object == "text_completion" and response.model == MODEL
    assert response.usage.prompt_tokens == sum(expected[p][2] for p in prompts)
    assert response.usage.completion_tokens == sum(len(expected[p][1]) for p in prompts)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streamed_completion_is_the_same_text_and_ends_with_done(server, client, expected):
    prompt = PROMPTS[2]
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected[prompt][0]
    assert chunks[-1].choices[0].finish_reason == _reason(expected[prompt][1])
    raw = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                     json={"model": MODEL, "prompt": prompt, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")


def test_chat_completions_streamed_and_not(client, expected):
    prompt = PROMPTS[3]
    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "an earlier turn"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": prompt}]
    response = client.chat.completions.create(model=MODEL, messages=messages)
    choice = response.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", expected[prompt][0])
    assert choice.finish_reason == _reason(expected[prompt][1])
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (expected[prompt][2],
                                                                                  len(expected[prompt][1]))
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected[prompt][0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == response.usage.total_tokens


def test_max_tokens_and_stop_cut_the_greedy_answer(client, expected):
    prompt = next(p for p in PROMPTS if len(expected[p][1]) >= 3)
    short = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2).choices[0]
    assert short.finish_reason == "length" and expected[prompt][0].startswith(short.text)
    text = expected[prompt][0]
    stop = text[len(text) // 2:len(text) // 2 + 1]
    cut = client.completions.create(model=MODEL, prompt=prompt, stop=[stop]).choices[0]
    assert (cut.text, cut.finish_reason) == (text[:text.index(stop)], "stop")
    same = client.completions.create(model=MODEL, prompt=prompt, n=2, temperature=0).choices
    assert [c.text for c in same] == [text, text]


def test_sampling_gives_n_choices_reproducible_by_seed(client, expected):
    def sample(seed):
        return client.completions.create(model=MODEL, prompt=PROMPTS[0], n=3, temperature=1.5, seed=seed)

    first = sample(7)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in sample(7).choices] == [c.text for c in first.choices]
    assert first.usage.prompt_tokens == expected[PROMPTS[0]][2]  # the prompt once, not once per choice
    assert 0 < first.usage.completion_tokens <= 3 * NEW_TOKENS
    assert len({c.text for c in first.choices} | {c.text for c in sample(8).choices}) > 1


def test_beam_search_matches_decode_texts(client, student):
    trained = load_trained(str(student))
    text = "[label] " + PROMPTS[1]
    beam = predict.decode_texts(trained.config, trained.params, trained.tokenizer(), [text], method="beam",
                                num_beams=4, max_decode_length=NEW_TOKENS, max_input_length=MAX_INPUT)
    response = client.completions.create(model=MODEL, prompt=PROMPTS[1], extra_body={"num_beams": 4})
    assert response.choices[0].text == beam[0]


def test_64_concurrent_requests_are_answered_in_batches(server, expected):
    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                                      timeout=120) as client:
            async def one(i):
                prompt = PROMPTS[i % len(PROMPTS)]
                if i % 2:
                    response = await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": prompt}])
                    return prompt, response.choices[0].message.content
                response = await client.completions.create(model=MODEL, prompt=prompt)
                return prompt, response.choices[0].text
            return await asyncio.gather(*(one(i) for i in range(64)))

    before = httpx.get(server.url + "/metrics", timeout=30).json()["batcher"]
    answers = asyncio.run(run())
    assert [text for _, text in answers] == [expected[p][0] for p, _ in answers]
    metrics = httpx.get(server.url + "/metrics", timeout=30).json()
    assert metrics["batcher"]["rows"] - before["rows"] == 64
    sizes = {int(size) for size, count in metrics["batcher"]["batch_sizes"].items()
             if count > before["batch_sizes"].get(size, 0)}
    assert max(sizes) > 1, metrics["batcher"]
    greedy = [p for p in metrics["programs"] if p["method"] == "greedy"]
    assert all(p["warmed"] for p in greedy), "a greedy request compiled a new program"
    assert {(p["rows"], p["length"]) for p in greedy} == {(r, n) for r in (1, 2, 4) for n in (16, 32, 64)}


def _post(server, path="/v1/completions", body=None, *, key=KEY, content=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, headers=headers, timeout=60,
                      content=content if content is not None else json.dumps(body))


@pytest.mark.parametrize("body, status, param, needle", [
    (None, 400, None, "not valid JSON"),
    ({"model": MODEL, "prompt": 3}, 400, "prompt", "string"),
    ({"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature", "number"),
    ({"model": MODEL, "prompt": "x", "n": 0}, 400, "n", ">= 1"),
    ({"model": MODEL, "prompt": "x", "max_tokens": NEW_TOKENS + 1}, 400, "max_tokens", f"limit of {NEW_TOKENS}"),
    ({"model": MODEL, "prompt": "apples " * 40}, 400, "prompt", f"limit of {MAX_INPUT}"),
    ({"model": MODEL, "messages": [{"role": "system", "content": "x"}]}, 400, "messages", "user"),
    ({"model": "gpt-9", "prompt": "x"}, 404, "model", "does not exist"),
    ({"model": MODEL, "prompt": "x" * (2 * BODY_LIMIT)}, 413, None, f"limit of {BODY_LIMIT} bytes"),
])
def test_bad_input_gets_an_openai_error_and_the_server_goes_on(server, client, expected, body, status, param, needle):
    path = "/v1/chat/completions" if body and "messages" in body else "/v1/completions"
    response = _post(server, path, body, content=b'{"model": "student", "prompt": ' if body is None else None)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert needle in error["message"]
    assert client.completions.create(model=MODEL, prompt=PROMPTS[0]).choices[0].text == expected[PROMPTS[0]][0]


def test_missing_or_wrong_key_is_401_and_never_echoed(server, client, expected):
    for key in (None, "sk-wrong", KEY[:-1]):
        response = _post(server, body={"model": MODEL, "prompt": "x"}, key=key)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert KEY not in response.text and (key is None or key not in response.text)
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert client.completions.create(model=MODEL, prompt=PROMPTS[0]).choices[0].text == expected[PROMPTS[0]][0]


def test_teacher_round_trip_writes_a_file_data_stats_reads(server, tmp_path):
    """`distill teacher --backend openai` against the served student, then `distill data stats` on its output."""
    data = make_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    env = {**os.environ, KEY_ENV: KEY}
    for split in ("train", "test"):
        teacher = subprocess.run(
            [sys.executable, "-m", "distill.cli", "teacher", "--dataset", "svamp", "--split", split, "--limit", "5",
             "--data-dir", str(data), "--out", str(out), "--backend", "openai", "--base-url", server.url + "/v1",
             "--model", MODEL, "--api-key-env", KEY_ENV, "--max-tokens", str(NEW_TOKENS), "--concurrency", "8",
             "--max-attempts", "1"],
            capture_output=True, text=True, timeout=300, env=env)
        assert teacher.returncode == 0, teacher.stderr
        assert "failed:          0" in teacher.stdout and KEY not in teacher.stdout + teacher.stderr
        records = [json.loads(line) for line in (out / "svamp" / f"{split}.teacher.jsonl").read_text().splitlines()]
        # A random student writes no answer phrase: parse failures, but each record holds its completion.
        assert len(records) == 5 and all(isinstance(r["teacher_raw"], list) and len(r["teacher_raw"]) == 1
                                         for r in records)
    stats = subprocess.run([sys.executable, "-m", "distill.cli", "data", "stats", "--dataset", "svamp", "--data-dir",
                            str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert stats.returncode == 0, stats.stderr
    table = json.loads(stats.stdout)
    assert sum(row["teacher_outputs"] for row in table.values()) == 10, table
    assert sum(row["parse_failures"] for row in table.values()) == 10, table


def test_sigterm_exits_zero_and_the_log_never_holds_the_key(student, tmp_path):
    """A server of its own (one bucket shape), so the module's server survives any test order."""
    args = ["--model-name", MODEL, "--api-key-env", KEY_ENV, "--max-batch-size", "1", "--max-input-tokens", "16",
            "--max-new-tokens", "4"]
    with ServeProcess(student, args, tmp_path / "serve.log", env={KEY_ENV: KEY}) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        assert client.completions.create(model=MODEL, prompt="four cups").choices
        assert server.terminate() == 0
    log = server.log.read_text()
    assert "Application shutdown complete" in log and KEY not in log


# ----------------------------------------------------------------------------
# The same app in-process with a gated fake decoder: in-flight limit, graceful stop
# ----------------------------------------------------------------------------


def _gated_app(student, max_in_flight):
    from distill.serve.app import ServeOptions, create_app
    from distill.serve.protocol import Limits
    from distill.vocab import load_tokenizer

    decoder = GatedDecoder()
    options = ServeOptions(limits=Limits(MODEL, MAX_INPUT, 32), task_prefix="", max_in_flight=max_in_flight)
    return decoder, create_app(decoder, load_tokenizer(str(student / "spiece.model")), options)


def _accepts(url):
    import socket

    try:
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1).close()
        return True
    except OSError:
        return False


def _in_background(url, prompt, results):
    def call():
        results.append(httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": prompt}, timeout=60))
    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_too_many_in_flight_is_429_with_retry_after(student):
    decoder, app = _gated_app(student, max_in_flight=2)
    with InProcessServer(app) as server:
        results = []
        threads = [_in_background(server.url, p, results) for p in ("the lazy dog", "four cups")]
        wait_until(lambda: httpx.get(server.url + "/metrics", timeout=10).json()["in_flight"] == 2)
        refused = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # not a generation route
        decoder.gate.set()
        for thread in threads:
            thread.join(60)
        assert sorted(r.json()["choices"][0]["text"] for r in results) == ["four cups", "the lazy dog"]
        again = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "she has"}, timeout=10)
        assert again.status_code == 200 and again.json()["choices"][0]["text"] == "she has"


def test_graceful_stop_finishes_the_requests_in_flight(student):
    decoder, app = _gated_app(student, max_in_flight=8)
    server = InProcessServer(app).__enter__()
    results = []
    threads = [_in_background(server.url, p, results) for p in ("the lazy dog", "four cups", "she has")]
    wait_until(lambda: httpx.get(server.url + "/metrics", timeout=10).json()["in_flight"] == 3)
    server.server.should_exit = True  # what uvicorn's SIGTERM handler does
    wait_until(lambda: not _accepts(server.url))  # shutting down: no new connections
    decoder.gate.set()
    for thread in threads:
        thread.join(60)
    server.thread.join(60)
    assert not server.thread.is_alive()
    assert sorted(r.status_code for r in results) == [200, 200, 200]
    assert sum(len(lengths) for _, lengths, _ in decoder.calls) == 3


def test_batcher_groups_rows_by_settings_and_length_bucket():
    """Full batches come from one length bucket; rows share a batch only with the same settings; a seeded
    group is private."""
    from distill.serve.batcher import Batcher
    from distill.serve.decoder import GREEDY, Settings

    decoder = GatedDecoder()
    decoder.gate.set()
    hot = Settings("sample", temperature=0.7)

    async def run():
        batcher = Batcher(decoder, max_wait_s=0.05)
        batcher.start()
        futures = batcher.submit([[5] * 3 + [1], [6] * 30 + [1], [7] * 4 + [1]], GREEDY)
        futures += batcher.submit([[8] * 2 + [1]] * 6, GREEDY)  # 8 rows of bucket 16, first come first: 4 + 4
        futures += batcher.submit([[9, 1], [9, 1]], hot)
        futures += batcher.submit([[9, 1]], hot, seed=11)
        results = await asyncio.gather(*futures)
        await batcher.stop()
        return results, batcher.stats()

    results, stats = asyncio.run(run())
    assert [r.ids for r in results[:3]] == [[5] * 3, [6] * 30, [7] * 4]
    assert sorted((method, sorted(lengths)) for method, lengths, _ in decoder.calls) == [
        ("greedy", [3, 3, 3, 3]), ("greedy", [3, 3, 4, 5]), ("greedy", [31]), ("sample", [2]), ("sample", [2, 2])]
    assert [rng for method, lengths, rng in decoder.calls if method == "sample" and len(lengths) == 1] == [(11, 16, 0)]
    assert stats["rows"] == 12 and stats["batch_sizes"] == {"1": 2, "2": 1, "4": 2}


def test_batcher_fills_a_batch_with_rows_of_other_lengths_and_skips_the_wait_when_every_request_is_queued():
    """A batch with room takes rows of other length buckets along (same settings, not seeded), shorter
    or longer; when every request in flight has rows queued, batches go at once, although max_wait is
    a minute."""
    from distill.serve.batcher import Batcher
    from distill.serve.decoder import GREEDY, Settings

    decoder = GatedDecoder()
    decoder.gate.set()
    hot = Settings("sample", temperature=0.7)
    requests: list[list[asyncio.Future]] = []

    def in_flight() -> int:  # as the server counts: a request leaves once all its rows are answered
        return sum(not all(future.done() for future in futures) for futures in requests)

    async def run():
        batcher = Batcher(decoder, max_wait_s=60.0, in_flight=in_flight)
        batcher.start()
        requests.append(batcher.submit([[6] * 30 + [1]], GREEDY))          # bucket 64, the oldest
        requests.append(batcher.submit([[5, 1], [7, 7, 1]], GREEDY))      # bucket 16: rides along
        requests.append(batcher.submit([[8] * 40 + [1]], hot, seed=3))    # seeded: never shares
        requests.append(batcher.submit([[9, 1]], hot))                     # other settings: never rides
        results = await asyncio.wait_for(asyncio.gather(*(f for futures in requests for f in futures)), 30)
        await batcher.stop()
        return results

    results = asyncio.run(run())
    assert [r.ids for r in results] == [[6] * 30, [5], [7, 7], [8] * 40, [9]]
    assert sorted((method, lengths) for method, lengths, _ in decoder.calls) == [
        ("greedy", [31, 2, 3]), ("sample", [2]), ("sample", [41])]

    decoder.calls.clear()
    requests.clear()

    async def short_first():
        batcher = Batcher(decoder, max_wait_s=60.0, in_flight=in_flight)
        batcher.start()
        requests.append(batcher.submit([[5, 1]], GREEDY))                  # bucket 16, the oldest
        requests.append(batcher.submit([[6] * 30 + [1]], GREEDY))          # bucket 64: rides along
        results = await asyncio.wait_for(asyncio.gather(*(f for futures in requests for f in futures)), 30)
        await batcher.stop()
        return results

    assert [r.ids for r in asyncio.run(short_first())] == [[5], [6] * 30]
    assert [lengths for _, lengths, _ in decoder.calls] == [[2, 31]]


def test_bucket_rungs():
    from distill.serve.decoder import length_buckets, row_buckets

    assert row_buckets(32) == [1, 2, 4, 8, 12, 16, 24, 32]
    assert row_buckets(4) == [1, 2, 4] and row_buckets(1) == [1]
    assert row_buckets(20) == [1, 2, 4, 8, 12, 16, 20]
    assert length_buckets(512) == [16, 32, 64, 128, 256, 512] and length_buckets(100) == [16, 32, 64, 100]
