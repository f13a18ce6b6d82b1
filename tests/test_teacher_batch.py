"""`--backend openai-batch`, accounting and budgets, against real loopback servers.

The Batch API fake (tests/batch_server.py) walks each batch through
validating -> in_progress -> finalizing -> its outcome, one step per poll, and
can fail single requests (error file, non-200, garbled line, no line), expire,
cancel or fail whole batches, and hold batches in progress while a test kills
the client. Budgets and costs are checked against hand arithmetic with servers
that report fixed token counts.
"""
import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from batch_server import BatchServer
from teacher_helpers import SVAMP_TEST, cli_command, cli_env, make_data_dir, read_jsonl, run_cli
from teacher_server import TeacherServer

from distill.cli import main as distill_main
from distill.teacher import prompts
from distill.teacher.accounting import Prices
from distill.teacher.backends.openai_batch import OpenAIBatchBackend
from distill.teacher.backends.openai_http import OpenAIBackend
from distill.teacher.batch_runner import BatchSettings
from distill.teacher.batcher import RetryPolicy
from distill.teacher.cli import format_summary
from distill.teacher.pipeline import run_teacher

FAST = BatchSettings(poll_interval=0.01, max_poll_interval=0.02)


def _batch(server, data, out, tmp_path, settings=FAST, **kwargs):
    backend = OpenAIBatchBackend(base_url=server.base_url, model="teacher", api_key=None, settings=settings,
                                 policy=RetryPolicy(base_delay=0.01))
    kwargs.setdefault("prompt_format", "chat")
    kwargs.setdefault("dataset", "svamp")
    kwargs.setdefault("split", "test")
    return run_teacher(data_dir=str(data), out=str(out), backend=backend,
                       progress_stream=open(tmp_path / "progress", "a"), **kwargs)


def _online(server, data, out, tmp_path, **kwargs):
    backend = OpenAIBackend(base_url=server.base_url, model="teacher", api_key=None)
    kwargs.setdefault("prompt_format", "chat")
    return run_teacher(dataset="svamp", split="test", data_dir=str(data), out=str(out), backend=backend,
                       concurrency=4, progress_stream=open(tmp_path / "progress", "a"), **kwargs)


def _usage(out, dataset="svamp", split="test"):
    return json.loads((out / dataset / f"{split}.teacher_usage.json").read_text())


FAULTS = {3: "error", 5: "http_400", 7: "malformed", 9: "missing"}


def test_statuses_partial_errors_and_a_malformed_line_then_a_rerun_matches_the_online_export(tmp_path, capsys):
    data = make_data_dir(tmp_path / "data")
    out, online_out = tmp_path / "out", tmp_path / "online"
    with TeacherServer() as server:
        _online(server, data, online_out, tmp_path)
    with BatchServer(line_fault=lambda key, number, index: FAULTS.get(index) if number == 0 else None,
                     flaky_polls=2) as server:
        summary = _batch(server, data, out, tmp_path)
        # Created validating, then polled through every state (two polls got a 503 first and were retried).
        assert server.statuses["batch_0001"] == ["validating", "validating", "in_progress", "finalizing",
                                                 "completed"]
        upload = server.uploads[0]["lines"]
        assert [line["custom_id"] for line in upload] == list(dict.fromkeys(line["custom_id"] for line in upload))
        assert {line["method"] for line in upload} == {"POST"}
        assert {line["url"] for line in upload} == {"/v1/chat/completions"}
        assert upload[0]["body"]["model"] == "teacher" and upload[0]["body"]["messages"][-1]["content"].startswith("Q:")
        assert summary.completed == 16 and summary.failed == 4 and summary.not_sent == 0
        records = read_jsonl(out / "svamp" / "test.teacher.jsonl")
        errors = {i: r["error"] for i, r in enumerate(records) if not r["teacher_raw"]}
        assert set(errors) == set(FAULTS)
        assert "the model crashed on this one" in errors[3]
        assert errors[5].startswith("HTTP 400") and "prompt too long" in errors[5]
        assert "unreadable result line" in errors[7]
        assert "completed without a result" in errors[9]

        assert distill_main(["teacher", "status", "--cache", str(out / "teacher_cache.sqlite")]) == 0
        status = capsys.readouterr().out.strip().splitlines()
        assert status[0].startswith("batch_0001  completed    20 requests (17 completed, 2 failed)")
        assert status[-1] == "answered: 16  failed: 4  pending: 0"

        # A rerun sends exactly the four failed requests, in one new batch, and then matches an online run.
        again = _batch(server, data, out, tmp_path)
        assert server.created == 2 and [line["custom_id"] for line in server.uploads[1]["lines"]] == [
            upload[i]["custom_id"] for i in sorted(FAULTS)]
        assert again.completed == 20 and again.from_cache == 16
        assert set(server.answers.values()) == {1}
    for name in ("test.teacher.jsonl", "svamp_test.json", "llm/test_CoT_0.json"):
        assert (out / "svamp" / name).read_bytes() == (online_out / "svamp" / name).read_bytes()


@pytest.mark.parametrize("outcome, answered_first", [("expired", 10), ("cancelled", 10), ("failed", 0)])
def test_an_ended_batch_resubmits_only_the_missing_requests(tmp_path, outcome, answered_first):
    data = make_data_dir(tmp_path / "data")
    with BatchServer(outcome=lambda number: outcome if number == 0 else "completed") as server:
        summary = _batch(server, data, tmp_path / "out", tmp_path)
        first, second = ([line["custom_id"] for line in upload["lines"]] for upload in server.uploads)
        assert server.created == 2 and len(first) == 20
        assert second == first[answered_first:]  # only what the first batch left unanswered, in order
        assert summary.completed == 20 and set(server.answers.values()) == {1}


def test_an_input_file_is_split_at_the_request_and_byte_limits(tmp_path):
    data = make_data_dir(tmp_path / "data")
    with BatchServer() as server:
        _batch(server, data, tmp_path / "a", tmp_path, settings=BatchSettings(
            max_requests_per_file=8, poll_interval=0.01, max_poll_interval=0.02))
        assert [len(u["lines"]) for u in server.uploads] == [8, 8, 4]
        line_bytes = max(u["bytes"] for u in server.uploads) // 8 + 1  # lines are of nearly equal size
        limit = int(line_bytes * 3.5)
        _batch(server, data, tmp_path / "b", tmp_path, settings=BatchSettings(
            max_bytes_per_file=limit, poll_interval=0.01, max_poll_interval=0.02))
        by_bytes = server.uploads[3:]
        assert all(u["bytes"] <= limit for u in by_bytes) and sum(len(u["lines"]) for u in by_bytes) == 20
        assert [len(u["lines"]) for u in by_bytes][:2] == [3, 3]
    assert len(read_jsonl(tmp_path / "b" / "svamp" / "test.teacher.jsonl")) == 20


def _cli_args(data, out, base_url, *extra):
    return ["--dataset", "svamp", "--split", "test", "--data-dir", str(data), "--out", str(out),
            "--backend", "openai-batch", "--base-url", base_url, "--model", "teacher",
            "--batch-poll-interval", "0.05", "--batch-max-poll-interval", "0.1", *extra]


def test_kill_9_while_polling_then_a_rerun_resumes_the_same_batches(tmp_path):
    data = make_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    with BatchServer(hold=True) as server:
        process = subprocess.Popen(cli_command(*_cli_args(data, out, server.base_url, "--batch-max-requests", "10")),
                                   env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (server.created == 2 and all(server.statuses[b].count("in_progress") >= 2 for b in server.order)):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before polling"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with sqlite3.connect(out / "teacher_cache.sqlite") as db:
            assert sorted(r[0] for r in db.execute("SELECT batch_id FROM batches")) == ["batch_0001", "batch_0002"]
        assert not (out / "svamp" / "test.teacher.jsonl").exists()
        server.hold = False
        rerun = run_cli(*_cli_args(data, out, server.base_url, "--batch-max-requests", "10"))
        assert rerun.returncode == 0, rerun.stderr
        assert server.created == 2 and len(server.uploads) == 2  # nothing submitted twice
        assert "completed:       20 (0 prompts from cache, 20 requested now)" in rerun.stdout
        assert len(server.answers) == 20 and set(server.answers.values()) == {1}


def test_a_run_that_stops_waiting_or_dies_before_recording_its_batch_is_resumed(tmp_path):
    """--batch-max-wait ends a run with its batch still running; a kill between "create" and recording
    the batch id (simulated by erasing it) makes the rerun find the batch by its input file."""
    data = make_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    with BatchServer(hold=True) as server:
        summary = _batch(server, data, out, tmp_path, settings=BatchSettings(
            poll_interval=0.01, max_poll_interval=0.02, max_wait=0.1))
        assert summary.completed == 0 and summary.not_sent == 20
        assert any("still running" in note for note in summary.notes)
        with sqlite3.connect(out / "teacher_cache.sqlite") as db:
            db.execute("UPDATE batches SET batch_id = NULL, status = 'uploaded'")
        server.hold = False
        again = _batch(server, data, out, tmp_path)
        assert server.created == 1 and again.completed == 20 and set(server.answers.values()) == {1}


def test_budget_stops_at_a_hand_computed_count_and_a_higher_budget_continues(tmp_path):
    """Answers report 10 completion tokens; output costs $1000 per million, input $0.

    Each request reserves max_tokens = 100 -> $0.10, settles to 10 tokens -> $0.01. With $0.135
    and one request at a time, request k is sent while 0.01 (k - 1) + 0.10 <= 0.135: k = 1..4.
    With $0.20 later: 0.04 + 0.01 j + 0.10 <= 0.20 for j = 0..6: 7 more, 11 in all.
    """
    data = make_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    ten_words = " ".join(["word"] * 10)

    def run(max_cost):
        return run_cli("--dataset", "svamp", "--split", "test", "--data-dir", str(data), "--out", str(out),
                       "--base-url", server.base_url, "--model", "teacher", "--concurrency", "1",
                       "--max-tokens", "100", "--price-input", "0", "--price-output", "1000",
                       "--max-cost", max_cost)

    with TeacherServer(answer=lambda prompt, sample: ten_words) as server:
        first = run("0.135")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip().splitlines()[-1] == (
            "budget reached: 4 of 20 prompts answered; rerun with a higher --max-cost to continue "
            "(answered prompts are in the cache and are not sent again)")
        assert sum(server.requests.values()) == 4
        assert run("0.135").stdout.strip().splitlines()[-1].startswith("budget reached: 4 of 20")
        assert sum(server.requests.values()) == 4  # the same budget buys nothing more
        third = run("0.2")
        assert third.stdout.strip().splitlines()[-1].startswith("budget reached: 11 of 20")
        assert sum(server.requests.values()) == 11 and set(server.answers.values()) == {1}
    usage = _usage(out)
    assert usage["this_run"]["completion_tokens"] == 70 and usage["this_run"]["cost_usd"] == pytest.approx(0.07)
    assert usage["total"]["answers"] == 11 and usage["total"]["cost_usd"] == pytest.approx(0.11)
    assert usage["budget_stop"].startswith("budget reached: 11 of 20")
    records = read_jsonl(out / "svamp" / "test.teacher.jsonl")
    assert sum(1 for r in records if r["teacher_raw"]) == 11 and len(records) == 20


def test_a_token_budget_limits_what_goes_into_the_batch_file(tmp_path):
    """Each request reserves len(prompt text) // 4 + 1 + max_tokens (chat: the contents joined by spaces)."""
    data = make_data_dir(tmp_path / "data")
    prompt_set = prompts.load_exemplars("svamp")
    reserve = []
    for record in SVAMP_TEST:
        messages = prompts.render_chat(prompt_set, record["input"])
        reserve.append(len(" ".join(m["content"] for m in messages)) // 4 + 1 + 256)
    limit = sum(reserve[:5]) + reserve[5] // 2
    with BatchServer() as server:
        summary = _batch(server, data, tmp_path / "out", tmp_path, max_tokens_total=limit)
        assert [len(u["lines"]) for u in server.uploads] == [5]
    assert summary.completed == 5 and summary.not_sent == 15
    assert summary.budget_stop.startswith("budget reached: 5 of 20 prompts answered; rerun with a higher "
                                          "--max-tokens-total")


def test_cost_figures_match_hand_arithmetic(tmp_path):
    """Every answer reports 1000 prompt + 50 completion tokens; $2 / $8 per million.

    One answer: (1000 * 2 + 50 * 8) / 1e6 = $0.0024 online, $0.0012 at the default 50% batch discount.
    """
    data = make_data_dir(tmp_path / "data")
    prices = Prices(2.0, 8.0)
    with BatchServer(usage=(1000, 50)) as server:
        batch = _batch(server, data, tmp_path / "batch", tmp_path, prices=prices)
        quarter = _batch(server, data, tmp_path / "quarter", tmp_path, prices=Prices(2.0, 8.0, 0.25))
    assert batch.total_usage.prompt_tokens == 20000 and batch.total_usage.completion_tokens == 1000
    assert batch.run_usage.cost == pytest.approx(20 * 0.0012) and quarter.run_usage.cost == pytest.approx(20 * 0.0018)
    assert "estimated cost:  $0.0240 this run, $0.0240 in total" in format_summary(batch)
    assert _usage(tmp_path / "batch")["total"] == {"answers": 20, "prompt_tokens": 20000, "completion_tokens": 1000,
                                                   "total_tokens": 21000, "cost_usd": 0.024}

    # Half online, then the rest by batch into the same cache: each answer priced by the backend that paid.
    mixed = tmp_path / "mixed"
    with TeacherServer(usage=(1000, 50)) as server:
        online = _online(server, data, mixed, tmp_path, prices=prices, limit=10)
    assert online.run_usage.cost == pytest.approx(10 * 0.0024)
    with BatchServer(usage=(1000, 50)) as server:
        rest = _batch(server, data, mixed, tmp_path, prices=prices)
        assert len(server.uploads[0]["lines"]) == 10  # the online answers are reused, not sent again
    assert rest.run_usage.answers == 10 and rest.run_usage.cost == pytest.approx(10 * 0.0012)
    assert rest.total_usage.answers == 20 and rest.total_usage.cost == pytest.approx(10 * 0.0024 + 10 * 0.0012)


def test_the_api_key_is_never_written_anywhere(tmp_path):
    data = make_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    key, wrong = "sk-QzXq9VvJ3wKp7RtLm4", "sk-Wb8TnYc2HdF6gUe5Ja"
    with BatchServer(api_key=key) as server:
        good = run_cli(*_cli_args(data, out, server.base_url, "--api-key-env", "TEACHER_TEST_KEY",
                                  "--price-input", "1", "--price-output", "2"), api_key=key)
        assert good.returncode == 0, good.stderr
        assert "completed:       20" in good.stdout
        # A wrong key: the 401 body echoes it; every recorded failure must be redacted.
        args = _cli_args(data, out, server.base_url, "--api-key-env", "TEACHER_TEST_KEY")
        args[args.index("svamp")] = "cqa"
        bad = run_cli(*args, api_key=wrong)
        assert bad.returncode == 0, bad.stderr
        assert "failed:          12" in bad.stdout
    errors = {r["error"] for r in read_jsonl(out / "cqa" / "test.teacher.jsonl")}
    assert len(errors) == 1 and "HTTP 401" in errors.pop()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "teacher_cache.sqlite" for p in files)
    written = b"\n".join(p.read_bytes() for p in files)
    assert b"[REDACTED]" in written
    streams = good.stdout + good.stderr + bad.stdout + bad.stderr
    for secret in (key, wrong):
        for start in range(len(secret) - 7):
            piece = secret[start : start + 8]
            assert piece.encode() not in written, piece
            assert piece not in streams, piece


def test_bad_batch_and_budget_flags_are_user_errors(tmp_path):
    from distill.errors import UserError
    from distill.teacher.cli import main

    base = ["--dataset", "svamp", "--model", "m", "--out", str(tmp_path), "--base-url", "http://127.0.0.1:1/v1"]
    for extra, match in ((["--max-cost", "1"], "--max-cost needs prices"),
                         (["--batch-discount", "1.5"], "--batch-discount is a fraction"),
                         (["--batch-max-requests", "0"], "--batch-max-requests must be >= 1"),
                         (["--max-tokens-total", "0"], "--max-tokens-total must be >= 1")):
        with pytest.raises(UserError, match=match):
            main([*base, *extra])
    with pytest.raises(UserError, match="needs --base-url"):
        main(["--dataset", "svamp", "--model", "m", "--out", str(tmp_path), "--backend", "openai-batch"])
    with pytest.raises(UserError, match="not found"):
        main(["status", "--cache", os.path.join(str(tmp_path), "nope.sqlite")])
