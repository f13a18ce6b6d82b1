"""Decode a task's split with a trained checkpoint: `distill infer` (gin, T5X's infer.py).

    distill infer --checkpoint runs/svamp_tiny --gin.TASK="'rationale'" --gin.SPLIT="'test'"

Writes JSONL records {"input", "target", "prediction"} for every example of
the run's label (or rationale) task on that split, to OUTPUT_FILE or
<model_dir>/predictions/infer_<task>_<split>_step<N>.jsonl. Unlike `distill
eval` it computes no metrics, so it also serves the rationale task and
splits without gold labels.
"""
from __future__ import annotations

import os
import sys

from distill.errors import UserError

TASKS = ("label", "rationale")


def infer_checkpoint(
    *,
    checkpoint_path: str,
    task: str = "label",
    split: str = "test",
    output_file: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 64,
    max_decode_length: int | None = None,
    decode_method: str = "greedy",
    num_beams: int = 4,
    max_examples: int | None = None,
) -> str:
    """Writes the predictions file and returns its path.

    task: "label" or "rationale" (the run's task of that kind).
    max_decode_length: None = 64 for labels, the target length for rationales.
    """
    from distill import input_pipeline
    from distill.eval import load_run
    from distill.jsonl import write_jsonl
    from distill.predict import decode_ids
    from distill.run_dir import predictions_path

    if task not in TASKS:
        raise UserError(f"TASK={task!r} must be one of {', '.join(TASKS)}")
    if output_file and not os.path.isdir(os.path.dirname(os.path.abspath(output_file))):
        raise UserError(f"the folder of OUTPUT_FILE {output_file} does not exist")
    run, vocabulary = load_run(checkpoint_path, data_dir=data_dir)
    info = run.run_info
    task_name = info["label_task"] if task == "label" else info.get("rationale_task")
    if not task_name:
        raise UserError(f"the run in {run.model_dir} has no rationale task")
    lengths = info["task_feature_lengths"]
    if max_decode_length is None:
        max_decode_length = 64 if task == "label" else lengths["targets"]
    examples = input_pipeline.eval_examples(task_name, split, max_examples=max_examples)
    predictions = decode_ids(run.config, run.params, vocabulary, [e.input_ids for e in examples],
                               batch_size=batch_size, max_input_length=lengths["inputs"], method=decode_method,
                               num_beams=num_beams, max_decode_length=max_decode_length)
    path = output_file or predictions_path(run.model_dir, f"infer_{task}_{split}_step{run.step}.jsonl")
    write_jsonl(path, input_pipeline.prediction_records(examples, predictions))
    return path


def main(argv: list[str] | None = None) -> int:
    """`distill infer --checkpoint DIR [--gin_file ...] [--gin.NAME=VALUE ...]`."""
    from distill import gin_bindings

    code, result = gin_bindings.run_entry_point("distill infer", argv, infer_checkpoint, name="infer_checkpoint",
                                                default_gin_file="runs/infer.gin", checkpoint_flag=True)
    if code:
        return code
    print(f"wrote {result}")
    return 0


if __name__ == "__main__":
    from distill import cli

    sys.exit(cli.main(["infer", *sys.argv[1:]], process_entry=True))
