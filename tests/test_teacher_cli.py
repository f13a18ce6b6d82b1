"""`distill teacher` argument checks, progress line and summary (in-process, against the loopback server)."""
import pytest
from teacher_helpers import make_data_dir
from teacher_server import TeacherServer

from distill.cli import main as distill_main
from distill.errors import UserError
from distill.teacher.cli import main


@pytest.mark.parametrize("extra, match", [
    (["--num-samples", "3"], "needs --temperature > 0"),
    (["--rpm", "0"], "--rpm must be > 0"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
    (["--timeout", "-1"], "--timeout must be > 0"),
])
def test_bad_flags_are_user_errors(tmp_path, extra, match):
    with pytest.raises(UserError, match=match):
        main(["--dataset", "svamp", "--model", "m", "--out", str(tmp_path),
              "--base-url", "http://127.0.0.1:1/v1", *extra])


def test_openai_backend_needs_a_base_url_and_distill_cli_prints_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match="needs --base-url"):
        main(["--dataset", "svamp", "--model", "m", "--out", str(tmp_path), "--data-dir", str(tmp_path)])
    code = distill_main(["teacher", "--dataset", "nope", "--model", "m", "--out", str(tmp_path),
                         "--base-url", "http://127.0.0.1:1/v1", "--data-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown dataset 'nope'")


def test_progress_line_and_summary(tmp_path, capsys):
    data = make_data_dir(tmp_path / "data")
    with TeacherServer() as server:
        code = main(["--dataset", "svamp", "--split", "test", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                     "--base-url", server.base_url, "--model", "teacher", "--limit", "6", "--concurrency", "3"])
    assert code == 0
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("teacher: 6/6 done | ") and all(
        part in last for part in (" req/s | ", " tok/s | ", "errors 0", "ETA 0:00:00"))
    for line in ("examples:        6", "completed:       6 (0 prompts from cache, 6 requested now)",
                 "failed:          0", "parse failures:  ", "teacher accuracy: ", "tokens used:     "):
        assert line in captured.out
    assert "% of 6 gold-labelled examples" in captured.out


def test_library_call_works_inside_a_running_event_loop(tmp_path):
    """Notebooks run an event loop already; run_teacher must not trip over it."""
    import asyncio

    from distill.teacher.backends.openai_http import OpenAIBackend
    from distill.teacher.pipeline import run_teacher

    data = make_data_dir(tmp_path / "data")
    with TeacherServer() as server:
        async def inside_a_loop():
            backend = OpenAIBackend(base_url=server.base_url, model="teacher", api_key=None)
            return run_teacher(dataset="svamp", split="test", data_dir=str(data), out=str(tmp_path / "out"),
                               backend=backend, limit=3, progress_stream=open(tmp_path / "p", "w"))

        summary = asyncio.run(inside_a_loop())
    assert summary.completed == 3


def test_importing_the_teacher_pulls_in_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, distill.teacher, distill.teacher.cli, distill.teacher.pipeline; "
            "print(sorted(m for m in ('tensorflow', 'seqio', 'jax', 'torch', 'httpx', 'transformers') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
