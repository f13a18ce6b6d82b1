"""Honest results: the reported step is chosen on validation only, the initial model is a baseline,
the chosen checkpoint outlives retention, early stopping reads validation."""
from __future__ import annotations

import pathlib

import runs_helpers as h
from distill.evaluation import best_step, with_step_results
from distill.optimizers import make_optimizer


def _evals(pairs):
    return {str(step): {"validation": {"accuracy": v}, "test": {"accuracy": t}} for step, (v, t) in pairs.items()}


def test_selection_reads_validation_only_and_ties_pick_the_earliest():
    # Test accuracy peaks at step 30; validation at 20 (and again, tied, at 40).
    evals = _evals({10: (0.2, 0.1), 20: (0.5, 0.2), 30: (0.4, 0.9), 40: (0.5, 0.3)})
    assert best_step(evals) == {"step": 20, "validation_accuracy": 0.5, "test_accuracy": 0.2}
    assert best_step(_evals({10: (0.0, 0.9)}))["step"] == 10
    assert best_step({"10": {"test": {"accuracy": 0.9}}}) is None  # no validation: nothing selected


def test_baseline_is_kept_apart_from_the_selection():
    data = with_step_results({}, step=0, results={"validation": {"accuracy": 0.9}, "test": {"accuracy": 0.8}},
                             dataset="svamp", task="t", baseline=True)
    data = with_step_results(data, step=5, results={"validation": {"accuracy": 0.1}, "test": {"accuracy": 0.2}},
                             dataset="svamp", task="t")
    assert data["baseline"]["test_accuracy"] == 0.8 and list(data["evals"]) == ["5"]
    assert data["best"]["step"] == 5 and data["test_accuracy"] == 0.2


def _kwargs(data_dir, model_dir, **overrides):
    kwargs = dict(model_dir=str(model_dir), dataset="svamp", mixture_or_task_name="svamp_step_by_step_gt",
                  task_feature_lengths={"inputs": 128, "targets": 64}, train_steps=4, batch_size=4,
                  model_config=h.micro_config(dropout_rate=0.0), optimizer=make_optimizer("adamw", 1e-3),
                  data_dir=str(data_dir), train_fraction=0.125, checkpoint_period=1, log_period=2,
                  eval_max_examples=8, max_decode_length=4, eval_period=1, keep_checkpoints=1,
                  async_checkpointing=False)
    kwargs.update(overrides)
    return kwargs


def test_baseline_only_with_an_initial_checkpoint_and_the_best_checkpoint_survives(shared_data_dir, tmp_path):
    from distill.run_dir import load_trained
    from distill.train import train

    first = train(**_kwargs(shared_data_dir, tmp_path / "a"))
    assert "baseline" not in first and first["best"] == best_step(first["evals"])
    second = train(**_kwargs(shared_data_dir, tmp_path / "b", initial_checkpoint_path=str(tmp_path / "a")))
    assert set(second["baseline"]) >= {"validation_accuracy", "test_accuracy"}
    assert (tmp_path / "b" / "predictions" / "test_baseline.jsonl").is_file()
    best = second["best"]
    assert best == best_step(second["evals"])
    kept = pathlib.Path(tmp_path / "b" / "best" / str(best["step"]))
    assert kept.is_dir() and [p.name for p in (tmp_path / "b" / "best").iterdir()] == [str(best["step"])]
    if best["step"] != 4:  # keep_checkpoints=1 removed it from checkpoints/, the copy stays
        assert not (tmp_path / "b" / "checkpoints" / str(best["step"])).exists()
    assert load_trained(str(kept)).step == best["step"]
    lines = (tmp_path / "b" / "predictions" / f"test_step{best['step']}.jsonl").read_text().splitlines()
    assert lines and all('"correct": ' in line for line in lines)


def test_early_stopping_stops_after_patience_evaluations_without_improvement(shared_data_dir, tmp_path):
    from distill.train import train

    # A zero learning rate keeps validation accuracy constant: the first evaluation stays the best.
    result = train(**_kwargs(shared_data_dir, tmp_path / "run", train_steps=50, early_stopping_patience=2,
                             optimizer=make_optimizer("adamw", 1e-12)))
    assert result["early_stopped_at"] == 3 and result["best"]["step"] == 1 and result["step"] == 3
    again = train(**_kwargs(shared_data_dir, tmp_path / "run", train_steps=50, early_stopping_patience=2,
                            optimizer=make_optimizer("adamw", 1e-12)))
    assert again["step"] == 3  # a relaunch does not train on
