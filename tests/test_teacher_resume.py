"""kill -9 in the middle of a run, then the same command again.

The server answers exactly K requests and holds the rest, the test waits
until those K answers are committed to the cache, SIGKILLs the real CLI
process, and reruns it. The rerun must request only the missing prompts
(the server answers every prompt exactly once over both runs) and write
byte-identical outputs to an uninterrupted run.
"""
import json
import os
import signal
import sqlite3
import subprocess
import time

from teacher_helpers import cli_command, cli_env, make_data_dir, run_cli
from teacher_server import TeacherServer

K = 8


def _args(data, out, base_url):
    return ["--dataset", "svamp", "--split", "test", "--data-dir", str(data), "--out", str(out),
            "--backend", "openai", "--base-url", base_url, "--model", "teacher", "--concurrency", "4",
            "--prompt-format", "completion"]


def _stored(cache_path) -> int:
    if not os.path.exists(cache_path):
        return 0
    try:
        with sqlite3.connect(f"file:{cache_path}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def _outputs(out):
    """Every output but the cache and the usage report (its "this_run" part differs by design)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "teacher_cache" not in p.name and not p.name.endswith(".teacher_usage.json")}


def test_sigkill_then_rerun_requests_only_what_is_missing_and_exports_the_same(tmp_path):
    data = make_data_dir(tmp_path / "data")
    reference_out, out = tmp_path / "reference", tmp_path / "out"
    with TeacherServer() as server:
        reference = run_cli(*_args(data, reference_out, server.base_url))
        assert reference.returncode == 0, reference.stderr

    with TeacherServer(latency=0.01, answer_budget=K) as server:
        process = subprocess.Popen(cli_command(*_args(data, out, server.base_url)), env=cli_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _stored(out / "teacher_cache.sqlite") < K:
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before K answers"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert _stored(out / "teacher_cache.sqlite") == K  # committed answers survived the kill
        assert not (out / "svamp" / "test.teacher.jsonl").exists()  # no half-written export
        assert sum(server.answers.values()) == K
        # Requests held when the client died are dropped unanswered.
        server.answer_budget = None
        server.release.set()
        rerun = run_cli(*_args(data, out, server.base_url))
        assert rerun.returncode == 0, rerun.stderr
        assert f"({K} prompts from cache, {20 - K} requested now)" in rerun.stdout
        assert len(server.answers) == 20 and set(server.answers.values()) == {1}  # no prompt answered twice

        again = run_cli(*_args(data, out, server.base_url))  # a third run sends nothing at all
        assert "(20 prompts from cache, 0 requested now)" in again.stdout
        assert len(server.answers) == 20 and set(server.answers.values()) == {1}

    assert _outputs(out) == _outputs(reference_out)
    assert set(_outputs(out)) == {"svamp/test.teacher.jsonl", "svamp/svamp_test.json", "svamp/llm/test_CoT_0.json"}
    # Tokens in total are the same whichever runs paid for them; the third run paid for none.
    usage, reference_usage = (json.loads((o / "svamp" / "test.teacher_usage.json").read_text())
                              for o in (out, reference_out))
    assert usage["total"] == reference_usage["total"] and usage["total"]["answers"] == 20
    assert usage["this_run"]["answers"] == 0 and reference_usage["this_run"] == reference_usage["total"]
