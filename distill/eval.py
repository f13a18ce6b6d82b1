"""Evaluate a trained checkpoint on its label task: `distill eval --checkpoint DIR`.

    distill eval --checkpoint runs/svamp_tiny                 # latest step
    distill eval --checkpoint runs/svamp_tiny/checkpoints/60 --gin.SPLITS="('test',)"
    python -m distill.eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH="'runs/svamp_tiny'"

Everything the run was trained with (dataset, data dir, train fraction,
tasks and their prefixes, vocabulary, model config) comes from the model dir's run.json, so
the only required input is the checkpoint; the evaluation is the one
training runs (distill.evaluation): predictions/<split>_step<N>.jsonl and
metrics.json in the model dir (or OUTPUT_DIR).
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from distill.errors import UserError

if TYPE_CHECKING:
    import seqio

    from distill.run_dir import Trained


def load_run(checkpoint_path: str, *, data_dir: str | None = None) -> tuple["Trained", "seqio.Vocabulary"]:
    """The trained run at `checkpoint_path` and its seqio vocabulary, with its tasks registered.

    Re-registers the run's seqio tasks with its vocabulary (data from
    `data_dir`, else the run's, else $DISTILL_DATA_DIR) so they can be read.
    UserError when the path is not a model dir with a finished checkpoint.
    """
    from distill.data.datasets import resolve_data_dir
    from distill.run_dir import load_trained
    from distill.tasks import register_tasks
    from distill.vocab import load_vocabulary

    trained = load_trained(checkpoint_path)
    if trained.model_dir is None:
        raise UserError(f"{checkpoint_path} is a Hugging Face folder; evaluation needs a model dir written by "
                        "`distill train` (its run.json names the tasks)")
    info = trained.run_info
    trained.tokenizer()  # the vocabulary must fit the model
    vocabulary = load_vocabulary(trained.tokenizer_path)
    recorded = info.get("data_dir")
    chosen = data_dir or (recorded if recorded and os.path.isdir(recorded) else None)
    register_tasks(dataset=info["dataset"], data_dir=resolve_data_dir(chosen, dataset=info["dataset"]),
                   vocabulary=vocabulary, train_fraction=info.get("train_fraction", 1.0),
                   label_prefix=trained.task_prefixes["label"], rationale_prefix=trained.task_prefixes["rationale"])
    return trained, vocabulary


def evaluate_checkpoint(
    *,
    checkpoint_path: str,
    splits: Sequence[str] = ("validation", "test"),
    output_dir: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 64,
    max_decode_length: int = 64,
    decode_method: str = "greedy",
    num_beams: int = 4,
    num_rationale_examples: int = 0,
    max_examples: int | None = None,
) -> dict[str, dict[str, float]]:
    """Decodes and scores the run's label task at the checkpoint; returns {split: metrics}.

    Writes predictions/<split>_step<N>.jsonl and updates metrics.json in
    output_dir (default: the model dir).
    """
    from distill.evaluation import EvalSettings, Evaluator

    run, vocabulary = load_run(checkpoint_path, data_dir=data_dir)
    info = run.run_info
    settings = EvalSettings(splits=tuple(splits), batch_size=batch_size,
                            max_input_length=info["task_feature_lengths"]["inputs"],
                            max_decode_length=max_decode_length, method=decode_method, num_beams=num_beams,
                            num_rationale_examples=num_rationale_examples,
                            rationale_max_decode_length=info["task_feature_lengths"]["targets"],
                            max_examples=max_examples)
    evaluator = Evaluator(label_task=info["label_task"], rationale_task=info.get("rationale_task"),
                          dataset=info["dataset"], vocabulary=vocabulary,
                          output_dir=output_dir or run.model_dir, settings=settings)
    return evaluator.evaluate(run.config, run.params, run.step)


def main(argv: list[str] | None = None) -> int:
    """`distill eval --checkpoint DIR [--gin_file ...] [--gin.NAME=VALUE ...]`."""
    from distill import gin_bindings

    code, result = gin_bindings.run_entry_point("distill eval", argv, evaluate_checkpoint, name="evaluate_checkpoint",
                                                default_gin_file="runs/eval.gin", checkpoint_flag=True)
    if code:
        return code
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from distill import cli

    sys.exit(cli.main(["eval", *sys.argv[1:]], process_entry=True))
