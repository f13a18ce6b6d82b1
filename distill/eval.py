"""Evaluate a trained checkpoint on its label task: `distill eval --checkpoint DIR`.

    distill eval --checkpoint runs/svamp_tiny                 # latest step
    distill eval --checkpoint runs/svamp_tiny/checkpoints/60 --gin.SPLITS="('test',)"
    python -m distill.eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH="'runs/svamp_tiny'"

Everything the run was trained with (dataset, data dir, train fraction,
tasks, vocabulary, model config) comes from the model dir's run.json, so
the only required input is the checkpoint; the evaluation is the one
training runs (distill.evaluation): predictions/<split>_step<N>.jsonl and
metrics.json in the model dir (or OUTPUT_DIR).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from distill.errors import UserError


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A trained run ready to decode: config, params, vocabulary, tasks, step."""

    model_dir: str
    step: int
    run_info: dict[str, Any]
    config: Any
    params: Any
    vocabulary: Any


def load_run(checkpoint_path: str, *, data_dir: str | None = None) -> LoadedRun:
    """Loads a model dir (latest checkpoint) or one `<model_dir>/checkpoints/<step>` folder.

    Re-registers the run's seqio tasks with its vocabulary (data from
    `data_dir`, else the run's, else $DISTILL_DATA_DIR) so they can be read.
    UserError when the path holds no finished checkpoint or no run.json.
    """
    import flax.linen as nn

    from distill import checkpointing
    from distill.models.t5 import T5Config, abstract_params
    from distill.partitioning import Partitioner
    from distill.tasks import register_tasks
    from distill.train import RUN_FILE, _read_run_file
    from distill.vocab import load_vocabulary

    path = os.path.abspath(checkpoint_path.rstrip("/"))
    if not os.path.exists(path):
        raise UserError(f"checkpoint {checkpoint_path} does not exist: pass a model dir or <model_dir>/checkpoints/<step>")
    if checkpointing.is_complete_step_dir(pathlib.Path(path)):
        model_dir, step = os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
    else:
        model_dir = path
        step = checkpointing.CheckpointManager(model_dir, save_every=1, async_save=False).latest_step()
        if step is None:
            raise UserError(f"{checkpoint_path} holds no finished checkpoint (expected checkpoints/<step> inside)")
    run_info = _read_run_file(model_dir)
    if not run_info:
        raise UserError(f"{model_dir} has no {RUN_FILE}: not a model dir written by `distill train`")
    config = T5Config(**run_info["model_config"])
    boxed = abstract_params(config)
    partitioner = Partitioner()
    params = checkpointing.restore_params(path, nn.unbox(boxed)["params"], partitioner.shardings_for(boxed)["params"])
    vocabulary = load_vocabulary(run_info["vocabulary_path"])
    chosen_data_dir = data_dir or (run_info["data_dir"] if os.path.isdir(run_info["data_dir"])
                                   else os.environ.get("DISTILL_DATA_DIR") or run_info["data_dir"])
    register_tasks(dataset=run_info["dataset"], data_dir=chosen_data_dir, vocabulary=vocabulary,
                   train_fraction=run_info.get("train_fraction", 1.0))
    return LoadedRun(model_dir=model_dir, step=step, run_info=run_info, config=config, params=params,
                     vocabulary=vocabulary)


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

    run = load_run(checkpoint_path, data_dir=data_dir)
    info = run.run_info
    settings = EvalSettings(splits=tuple(splits), batch_size=batch_size,
                            max_input_length=info["task_feature_lengths"]["inputs"],
                            max_decode_length=max_decode_length, method=decode_method, num_beams=num_beams,
                            num_rationale_examples=num_rationale_examples,
                            rationale_max_decode_length=info["task_feature_lengths"]["targets"],
                            max_examples=max_examples)
    evaluator = Evaluator(label_task=info["label_task"], rationale_task=info.get("rationale_task"),
                          dataset=info["dataset"], vocabulary=run.vocabulary,
                          output_dir=output_dir or run.model_dir, settings=settings)
    return evaluator.evaluate(run.config, run.params, run.step)


def main(argv: list[str] | None = None) -> int:
    """`distill eval --checkpoint DIR [--gin_file ...] [--gin.NAME=VALUE ...]`."""
    from distill import gin_bindings

    code, result = gin_bindings.run_entry_point("distill eval", argv, "evaluate_checkpoint",
                                                default_gin_file="runs/eval.gin", checkpoint_flag=True)
    if code:
        return code
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from distill import eval as _eval_module  # run the importable copy, not __main__'s

    sys.exit(_eval_module.main())
