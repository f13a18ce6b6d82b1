"""Label-task evaluation: decode valid/test, score, write predictions and metrics.

At inference only the label task runs (DESIGN.md section 1), so evaluation
decodes the `[label] ` inputs of the label task's validation/test splits (greedy
by default, like the reference's `predict_with_generate`), scores them with
the task's seqio metric functions (distill.metrics: accuracy, or equation
accuracy for SVAMP), and writes into the model dir:

    predictions/<split>_step<N>.jsonl   {"input", "target", "prediction"} per example
    predictions/rationales_step<N>.jsonl  (optional) a few decoded rationales
    metrics.json   {"dataset", "task", "latest_step", "test_accuracy",
                    "validation_accuracy", "evals": {"<step>": {"<split>": {...}}}}

All files are written to a temp file and renamed, so a crash never leaves a
half-written metrics.json; earlier steps' entries are kept.

Only the decoding needs the model; the examples and metric functions come
from seqio (imported when an `Evaluator` is built, not at module import).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from distill.atomic import write_atomically
from distill.errors import UserError

METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How to evaluate (gin-free; the entry points fill it from gin/flags).

    splits: label-task seqio splits to decode, e.g. ("validation", "test").
    max_input_length: inputs are cut to this many tokens (with EOS).
    max_decode_length: at most this many output tokens (reference: 64).
    method: "greedy" | "beam" | "sample" (distill.predict).
    num_rationale_examples: also decode this many rationales of the last split
      (0 = none), to inspect what the student explains.
    max_examples: evaluate only the first N examples per split (None = all).
    """

    splits: tuple[str, ...] = ("validation", "test")
    batch_size: int = 64
    max_input_length: int = 512
    max_decode_length: int = 64
    method: str = "greedy"
    num_beams: int = 4
    num_rationale_examples: int = 0
    rationale_max_decode_length: int = 256
    max_examples: int | None = None


@dataclasses.dataclass(frozen=True)
class _Split:
    inputs: list[str]
    targets: list[str]


class Evaluator:
    """Decodes and scores the label task of one run; examples are read once.

    Args:
      label_task: the seqio label task, e.g. "svamp_label_gt" (its valid/test
        targets are gold labels).
      rationale_task: the rationale task for the optional rationale samples.
      dataset: dataset name written into metrics.json.
      vocabulary: what the tasks were tokenized with (encode/decode).
      output_dir: where predictions/ and metrics.json go (the model dir).
      settings: see EvalSettings.
      write: False on non-primary processes (they decode but write nothing).
    """

    def __init__(self, *, label_task: str, rationale_task: str | None, dataset: str, vocabulary: Any,
                 output_dir: str, settings: EvalSettings, write: bool = True) -> None:
        from distill import input_pipeline

        self.label_task = label_task
        self.dataset = dataset
        self.vocabulary = vocabulary
        self.output_dir = output_dir
        self.settings = settings
        self.write = write
        provider = input_pipeline.get_provider(label_task)
        self._metric_fns: Sequence[Callable] = list(provider.predict_metric_fns)
        if not self._metric_fns:
            raise UserError(f"task {label_task!r} has no metric functions; evaluate a label task")
        self._postprocess = provider.postprocess_fn
        self._splits: dict[str, _Split] = {}
        for split in settings.splits:
            examples = input_pipeline.eval_examples(label_task, split, max_examples=settings.max_examples)
            self._splits[split] = _Split([e.input for e in examples], [e.target for e in examples])
        self._rationales: _Split | None = None
        if rationale_task and settings.splits and settings.num_rationale_examples > 0:
            examples = input_pipeline.eval_examples(rationale_task, settings.splits[-1],
                                                    max_examples=settings.num_rationale_examples)
            self._rationales = _Split([e.input for e in examples], [e.target for e in examples])

    def evaluate(self, config: Any, params: Any, step: int) -> dict[str, dict[str, float]]:
        """Decodes every split at `step`, writes the files, returns {split: metrics}."""
        from distill.predict import decode_texts

        s = self.settings
        results: dict[str, dict[str, float]] = {}
        for split, data in self._splits.items():
            start = time.perf_counter()
            predictions = decode_texts(config, params, self.vocabulary, data.inputs, batch_size=s.batch_size,
                                       max_input_length=s.max_input_length, method=s.method,
                                       num_beams=s.num_beams, max_decode_length=s.max_decode_length)
            metrics = self._score(data.targets, predictions)
            metrics["num_examples"] = len(predictions)
            metrics["decode_seconds"] = round(time.perf_counter() - start, 3)
            results[split] = metrics
            self._write_predictions(f"{split}_step{step}.jsonl", data, predictions)
        if self._rationales is not None:
            rationales = decode_texts(config, params, self.vocabulary, self._rationales.inputs,
                                      batch_size=s.batch_size, max_input_length=s.max_input_length,
                                      max_decode_length=s.rationale_max_decode_length)
            self._write_predictions(f"rationales_step{step}.jsonl", self._rationales, rationales)
        if self.write:
            update_metrics_file(self.output_dir, step=step, results=results, dataset=self.dataset,
                                task=self.label_task)
        return results

    def _score(self, targets: list[str], predictions: list[str]) -> dict[str, float]:
        post_targets = [self._postprocess(t, example={}, is_target=True) for t in targets]
        post_predictions = [self._postprocess(p, example={}, is_target=False) for p in predictions]
        metrics: dict[str, float] = {}
        for fn in self._metric_fns:
            for name, value in fn(post_targets, post_predictions).items():
                metrics[name] = float(getattr(value, "value", value))
        return metrics

    def _write_predictions(self, name: str, data: _Split, predictions: list[str]) -> None:
        if not self.write:
            return
        lines = [json.dumps({"input": i, "target": t, "prediction": p}, ensure_ascii=False)
                 for i, t, p in zip(data.inputs, data.targets, predictions)]
        write_atomically(os.path.join(self.output_dir, PREDICTIONS_DIR, name), "\n".join(lines) + "\n")

    def has_step(self, step: int) -> bool:
        """Whether metrics.json already holds every split of this evaluator at `step`."""
        done = read_metrics_file(self.output_dir).get("evals", {}).get(str(step), {})
        return all(split in done for split in self._splits)


def read_metrics_file(output_dir: str) -> dict[str, Any]:
    """metrics.json of a model dir ({} when absent); UserError when it is not JSON."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not readable JSON ({err}); move it away to start a new one") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; move it away to start a new one")
    return data


def update_metrics_file(output_dir: str, *, step: int, results: dict[str, dict[str, float]], dataset: str,
                        task: str) -> dict[str, Any]:
    """Adds one step's results to metrics.json and refreshes the top-level summary.

    The summary (`latest_step`, `<split>_accuracy`) describes the newest step
    evaluated, so after training it holds the final test accuracy.
    """
    data = read_metrics_file(output_dir)
    evals = data.setdefault("evals", {})
    evals.setdefault(str(step), {}).update(results)
    latest = max(int(s) for s in evals)
    data.update({"dataset": dataset, "task": task, "latest_step": latest})
    for split, metrics in evals[str(latest)].items():
        if "accuracy" in metrics:
            data[f"{split}_accuracy"] = metrics["accuracy"]
    data["evals"] = {k: evals[k] for k in sorted(evals, key=int)}
    write_atomically(os.path.join(output_dir, METRICS_FILE), json.dumps(data, indent=2, sort_keys=False) + "\n")
    return data
