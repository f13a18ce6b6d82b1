"""The error boundary of every subcommand: known failures are one line and exit 2, bugs exit 1."""
import errno
import subprocess
import sys

from distill import cli
from distill.errors import UserError


def _raise(err):
    def entry():
        raise err
    return entry


def test_known_failures_are_one_line_with_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("DISTILL_DEBUG", raising=False)
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.json")
    assert cli.run_main(_raise(full)) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: No space left on device (/runs/x/metrics.json): check the path, its permissions and "
                   "the free disk space"]
    assert cli.run_main(_raise(UserError("bad thing; fix it"))) == 2
    assert capsys.readouterr().err == "error: bad thing; fix it\n"


def test_debug_adds_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_DEBUG", "1")
    assert cli.run_main(_raise(PermissionError(errno.EACCES, "Permission denied", "/ro/out.jsonl"))) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: Permission denied (/ro/out.jsonl)")


def test_a_bug_keeps_its_traceback_and_exits_1():
    code = "from distill.cli import run_main; run_main(lambda: 1 / 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "ZeroDivisionError" in done.stderr and "Traceback" in done.stderr


def test_python_m_entry_points_share_the_boundary():
    done = subprocess.run([sys.executable, "-m", "distill.predict", "--checkpoint", "/nonexistent", "--input", "x"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: checkpoint /nonexistent does not exist: pass a Hugging Face T5 folder, a model dir or "
        "<model_dir>/checkpoints/<step>"]
