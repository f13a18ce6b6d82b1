"""`distill sweep`: the grid, per-run gin, resume by skipping finished runs, results.csv.

The grid logic is tested with an injected fake run function (instant); one
test trains the real 2 methods x 2 fractions x 2 seeds grid on SVAMP with a
micro T5 for a few steps, then reruns it and checks all 8 are skipped.
"""
import csv
import json
import os
import re
import subprocess
import sys

import pytest

from distill import sweep
from distill.errors import UserError
from distill.report import RESULT_COLUMNS

MODELS = {"tiny": sweep.default_model_spec("tiny")}


def _binding(bindings, name):
    for binding in bindings:
        key, _, value = binding.partition(" = ")
        if key == name:
            last = value
    return eval(last)  # The test's own bindings: plain Python literals.


class FakeTrain:
    """Records calls; writes metrics.json as the trainer does, with an accuracy encoding the grid point."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, gin_files, bindings):
        model_dir = _binding(bindings, "MODEL_DIR")
        self.calls.append((gin_files, bindings))
        if self.fail_on and self.fail_on in model_dir:
            raise RuntimeError("boom")
        os.makedirs(model_dir, exist_ok=True)
        accuracy = _binding(bindings, "TRAIN_FRACTION") / 10 + _binding(bindings, "SEED") / 100
        step = _binding(bindings, "TRAIN_STEPS")
        metrics = {"latest_step": step, "test_accuracy": accuracy, "tokens_per_second": 100.0}
        with open(os.path.join(model_dir, "metrics.json"), "w") as handle:
            json.dump(metrics, handle)
        return {**metrics, "step": step, "preempted": False}


def _grid():
    return sweep.make_grid(["svamp"], ["standard_gt", "step_by_step_gt"], ["tiny"], [0.5, 1.0], [0, 1])


def _read_csv(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
        return list(reader)


def test_grid_runs_each_point_in_its_own_dir_with_its_gin(tmp_path, repo_root):
    fake = FakeTrain()
    outcome = sweep.run_sweep(_grid(), str(tmp_path), models=MODELS, steps=7, data_dir="/data", run_fn=fake,
                              log=lambda line: None)
    assert len(outcome.trained) == 8 and not outcome.skipped and not outcome.failed
    model_dirs = {_binding(b, "MODEL_DIR") for _, b in fake.calls}
    assert len(model_dirs) == 8 and all(d.startswith(str(tmp_path / "runs")) for d in model_dirs)
    files, bindings = fake.calls[-1]
    assert files == ["experiments/svamp/step_by_step_gt_tiny.gin"]
    assert (repo_root / "gin_configs" / files[0]).is_file()
    assert _binding(bindings, "DATA_DIR") == "/data" and _binding(bindings, "TRAIN_STEPS") == 7
    rows = _read_csv(outcome.results_csv)
    assert len(rows) == 8
    row = next(r for r in rows if r["method"] == "standard_gt" and r["train_fraction"] == "0.5" and r["seed"] == "1")
    assert float(row["accuracy"]) == pytest.approx(0.06) and row["steps"] == "7"
    assert float(row["tokens_per_second"]) == 100.0 and 0 <= float(row["train_seconds"]) < 60
    assert row["model_dir"] == str(tmp_path / "runs" / "svamp-standard_gt-tiny-frac0.5-seed1")


def test_rerun_skips_finished_runs_and_more_steps_resumes_them(tmp_path):
    sweep.run_sweep(_grid(), str(tmp_path), models=MODELS, steps=7, run_fn=FakeTrain(), log=lambda line: None)
    again = FakeTrain()
    outcome = sweep.run_sweep(_grid(), str(tmp_path), models=MODELS, steps=7, run_fn=again, log=lambda line: None)
    assert again.calls == [] and len(outcome.skipped) == 8 and len(outcome.rows) == 8
    longer = FakeTrain()
    outcome = sweep.run_sweep(_grid(), str(tmp_path), models=MODELS, steps=9, run_fn=longer, log=lambda line: None)
    assert len(longer.calls) == 8 and {r["steps"] for r in outcome.rows} == {9}


def test_a_crashing_run_is_recorded_and_the_rest_go_on(tmp_path):
    outcome = sweep.run_sweep(_grid(), str(tmp_path), models=MODELS, steps=3,
                              run_fn=FakeTrain(fail_on="step_by_step_gt-tiny-frac1-seed0"), log=lambda line: None)
    assert outcome.failed == ["svamp-step_by_step_gt-tiny-frac1-seed0"]
    assert "RuntimeError: boom" in (tmp_path / "runs" / outcome.failed[0] / "error.txt").read_text()
    assert len(_read_csv(outcome.results_csv)) == 7
    # The next sweep retries only the failed run.
    retry = FakeTrain()
    sweep.run_sweep(_grid(), str(tmp_path), models=MODELS, steps=3, run_fn=retry, log=lambda line: None)
    assert [re.search(r"runs/(\S+)'", b[0]).group(1) for _, b in retry.calls] == outcome.failed


def test_a_preempted_run_stops_the_sweep_unfinished(tmp_path):
    def preempted(gin_files, bindings):
        FakeTrain()(gin_files, bindings)
        return {"step": 3, "preempted": True}
    outcome = sweep.run_sweep(_grid(), str(tmp_path), models=MODELS, steps=7, run_fn=preempted, log=lambda line: None)
    assert len(outcome.failed) == 1 and not outcome.trained and outcome.rows == []


def test_user_error_stops_the_sweep(tmp_path):
    def broken(gin_files, bindings):
        raise UserError("DATA_DIR /nope has no svamp")
    with pytest.raises(UserError, match="/nope"):
        sweep.run_sweep(_grid(), str(tmp_path), models=MODELS, run_fn=broken, log=lambda line: None)


def test_pretrained_sizes_use_the_paper_files_and_their_checkpoint():
    spec = sweep.default_model_spec("base", "/ckpt/t5-v1_1-base")
    point = sweep.GridPoint("cqa", "step_by_step_llm", "base", 0.25, 2)
    files, bindings = sweep.gin_config_for(point, spec, "/m", steps=None, data_dir=None)
    assert files == ["experiments/cqa/step_by_step_llm.gin", "models/t5_1_1_base.gin"]
    assert "INITIAL_CHECKPOINT_PATH = '/ckpt/t5-v1_1-base'" in bindings
    assert not any(b.startswith(("TRAIN_STEPS", "DATA_DIR")) for b in bindings)


def test_method_bindings_reach_only_that_methods_runs_before_the_command_lines():
    spec = sweep.ModelSpec("tiny", tiny=True, bindings=("BATCH_SIZE = 8",),
                           method_bindings=(("standard_gt", "PACK = False"),))
    standard, step_by_step = (sweep.GridPoint("svamp", method, "tiny", 1.0, 0)
                              for method in ("standard_gt", "step_by_step_gt"))
    _, bindings = sweep.gin_config_for(standard, spec, "/m", steps=None, data_dir=None, extra_bindings=("PACK = True",))
    assert bindings[-3:] == ["BATCH_SIZE = 8", "PACK = False", "PACK = True"]  # later bindings win
    _, bindings = sweep.gin_config_for(step_by_step, spec, "/m", steps=None, data_dir=None)
    assert "PACK = False" not in bindings


@pytest.mark.parametrize("argv, message", [
    (["--methods", "distill"], "unknown method 'distill'"),
    (["--fractions", "0"], "outside \\(0, 1\\]"),
    (["--models", "huge"], "unknown model size 'huge'"),
    (["--checkpoint", "tiny=/x"], "expected SIZE=PATH"),
])
def test_bad_grid_arguments_are_user_errors(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        sweep.main(["--out", str(tmp_path), *argv])


def test_real_2x1x2_grid_on_svamp_then_rerun_skips_all(tmp_path, shared_data_dir, repo_root):
    """Trains in a fresh process, as `distill sweep` does (so JAX's compilation cache is in use). Four real
    runs; the whole grid's bookkeeping (8 points) is test_grid_runs_each_point_in_its_own_dir_with_its_gin's."""
    sweep_dir = tmp_path / "sweep"
    # Micro model, two steps: XLA at -O0 compiles much faster, and speed does not matter here.
    env = dict(os.environ, PYTHONPATH=str(repo_root / "tests"), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    code = f"import e2e_helpers; e2e_helpers.run_micro_sweep({str(sweep_dir)!r}, {str(shared_data_dir)!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(": test accuracy") == 4
    rows = _read_csv(sweep_dir / "results.csv")
    assert sorted((r["method"], r["train_fraction"], r["seed"]) for r in rows) == sorted(
        (method, "0.125", seed) for method in ("standard_gt", "step_by_step_gt") for seed in ("0", "1"))
    for row in rows:
        assert row["model"] == "micro" and row["steps"] == "2" and 0.0 <= float(row["accuracy"]) <= 1.0
        assert float(row["tokens_per_second"]) > 0 and float(row["train_seconds"]) > 0
        metrics = json.loads((sweep_dir / "runs" / os.path.basename(row["model_dir"]) / "metrics.json").read_text())
        assert metrics["evals"]["2"]["test"]["num_examples"] == 8
    # The fraction and the method's mixture reached the trainer.
    run_info = json.loads((sweep_dir / "runs" / "svamp-standard_gt-micro-frac0.125-seed1" / "run.json").read_text())
    assert run_info["train_fraction"] == 0.125 and run_info["mixture_or_task_name"] == "svamp_label_gt"

    def must_not_train(gin_files, bindings):
        raise AssertionError("a finished run was trained again")
    grid = sweep.make_grid(["svamp"], ["standard_gt", "step_by_step_gt"], ["micro"], [0.125], [0, 1])
    again = sweep.run_sweep(grid, str(sweep_dir), models={"micro": sweep.ModelSpec("micro", tiny=True)}, steps=2,
                            run_fn=must_not_train, log=lambda line: None)
    assert len(again.skipped) == 4 and _read_csv(again.results_csv) == rows
