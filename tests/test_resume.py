"""An interrupted run (kill -9 between checkpoints, then a SIGTERM preemption) ends
with exactly the parameters of an uninterrupted one.
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

from distill.checkpointing import is_complete_step_dir

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "resume_worker.py"
TOTAL, SAVE_EVERY = 8, 3
TIMEOUT = 600


def _start(model_dir, cache_dir, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(model_dir), str(TOTAL), str(SAVE_EVERY), *map(str, args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _read_until(proc, marker: str) -> list[str]:
    """Lines of proc's output up to and including the one starting with marker."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(marker):
            return lines
    proc.wait(timeout=TIMEOUT)
    raise AssertionError(f"worker exited ({proc.returncode}) before {marker!r}:\n" + "".join(lines))


def _finish(proc) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out[-4000:]
    return out


def _wait_for_checkpoint(step_dir: pathlib.Path, proc) -> None:
    """The paused worker's async save of step_dir completes on its own; wait for it."""
    while not is_complete_step_dir(step_dir):
        assert proc.poll() is None, "worker died before its checkpoint was written"
        time.sleep(0.05)


def test_kill_and_preemption_resume_match_uninterrupted_run(tmp_path):
    cache = tmp_path / "compile_cache"
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    # Run 1: killed with SIGKILL after step 4 (checkpoint 3 on disk, step 4 unsaved).
    run = _start(interrupted, cache, 4)
    _read_until(run, "paused at step 4")
    reference = _start(straight, cache)  # uninterrupted; reuses run 1's compiled steps
    _wait_for_checkpoint(interrupted / "checkpoints" / "3", run)
    run.kill()
    run.wait(timeout=TIMEOUT)

    # Run 2: resumes at step 3 / data position 3; SIGTERM after step 5 makes it save 5 and exit.
    run = _start(interrupted, cache, 5)
    lines = _read_until(run, "paused at step 5")
    assert any(line.startswith("resumed from step 3 at data position 3") for line in lines), lines
    run.send_signal(signal.SIGTERM)
    assert "preempted: saved step 5" in _finish(run)
    steps = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert steps == ["3", "5"]  # keep=2; 5 is not a multiple of SAVE_EVERY: the guard saved it

    # Run 3: resumes at 5 and finishes.
    out = _finish(_start(interrupted, cache))
    assert "resumed from step 5 at data position 5" in out
    _finish(reference)

    expected, got = np.load(straight / "final.npz"), np.load(interrupted / "final.npz")
    assert sorted(expected.files) == sorted(got.files)
    for name in expected.files:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
