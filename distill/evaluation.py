"""Label-task evaluation: decode valid/test, score, write predictions and metrics.

At inference only the label task runs (the method, README.md), so evaluation
decodes the `[label] ` inputs of the label task's validation/test splits (greedy
by default, like the reference's `predict_with_generate`), scores them with
the task's seqio metric functions (distill.metrics: accuracy, or equation
accuracy for SVAMP), and writes into the model dir:

    predictions/<split>_step<N>.jsonl   {"input", "target", "prediction"} per example
    predictions/rationales_step<N>.jsonl  (optional) a few decoded rationales
    metrics.json   {"dataset", "task", "latest_step", "test_accuracy",
                    "validation_accuracy", "evals": {"<step>": {"<split>": {...}}}}

File names come from distill/run_dir.py; every file is written atomically
(distill/atomic.py), so a crash never leaves a half-written metrics.json;
earlier steps' entries are kept. The Evaluator reads metrics.json once and
keeps it in memory, so training returns what it wrote without reading it back.

Only the decoding needs the model. The examples come from seqio
(distill.input_pipeline.eval_examples) or, in training with `TRAIN_FEED =
'process'`, from the files the feed's child wrote (distill/train_feed.py);
the label tasks' metric and postprocessor are distill/metrics.py's.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from distill.errors import UserError
from distill.jsonl import write_jsonl
from distill.run_dir import predictions_path, read_metrics, write_metrics


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
      read_examples: (task, split, max_examples=) -> examples with input,
        input_ids and target (default: seqio's, distill.input_pipeline.eval_examples).
    """

    def __init__(self, *, label_task: str, rationale_task: str | None, dataset: str, vocabulary: Any,
                 output_dir: str, settings: EvalSettings, write: bool = True,
                 read_examples: Callable[..., list[Any]] | None = None) -> None:
        from distill.metrics import metric_fn_for, strip_whitespace
        from distill.task_specs import task_configs

        if not any(label_task.endswith(f"_{c.suffix}") for c in task_configs() if c.with_metrics):
            raise UserError(f"task {label_task!r} has no metric functions; evaluate a label task")
        if read_examples is None:
            from distill.input_pipeline import eval_examples as read_examples
        self.label_task = label_task
        self.dataset = dataset
        self.vocabulary = vocabulary
        self.output_dir = output_dir
        self.settings = settings
        self.write = write
        self._metric_fns: Sequence[Callable] = [metric_fn_for(dataset)]
        self._postprocess = strip_whitespace
        requests = example_requests(label_task, rationale_task, settings)
        self._splits = {split: read_examples(task, split, max_examples=count)
                        for task, split, count in requests if task == label_task}
        self._rationales = None
        if rationale_task and len(requests) > len(self._splits):
            task, split, count = requests[-1]
            self._rationales = read_examples(task, split, max_examples=count)
        self.metrics: dict[str, Any] = read_metrics(output_dir)

    def evaluate(self, config: Any, params: Any, step: int, *, baseline: bool = False) -> dict[str, dict[str, float]]:
        """Decodes every split at `step`, writes the files, returns {split: metrics}.

        The splits are decoded together; each split's metrics carry num_examples
        and decode_seconds, the wall time of that shared decode.

        baseline: this is the initial model, before any training step: its
        results go to metrics.json's "baseline" and predictions/<split>_baseline.jsonl,
        never into the per-step evaluations that select the best step.
        """
        from distill.predict import decode_ids

        s = self.settings
        # Every split in one decode: its batches are sorted by length over all the splits, so
        # there are fewer batches, and fewer batch shapes to compile, than split by split. Each
        # batch keeps its own shape (merge_shapes=False): every evaluation decodes the same inputs
        # with the programs the first one compiled, so padding them to fewer shapes would cost
        # at every evaluation and save only at the first.
        start = time.perf_counter()
        decoded = iter(decode_ids(config, params, self.vocabulary,
                                  [e.input_ids for examples in self._splits.values() for e in examples],
                                  batch_size=s.batch_size, max_input_length=s.max_input_length, method=s.method,
                                  num_beams=s.num_beams, max_decode_length=s.max_decode_length, merge_shapes=False))
        seconds = round(time.perf_counter() - start, 3)
        results: dict[str, dict[str, float]] = {}
        for split, examples in self._splits.items():
            predictions = [next(decoded) for _ in examples]
            targets = [e.target for e in examples]
            metrics = self._score(targets, predictions)
            metrics["num_examples"] = len(predictions)
            metrics["decode_seconds"] = seconds  # the shared decode's
            results[split] = metrics
            name = f"{split}_baseline.jsonl" if baseline else f"{split}_step{step}.jsonl"
            self._write_predictions(name, examples, predictions, self._correct(targets, predictions))
        if self._rationales is not None:
            rationales = decode_ids(config, params, self.vocabulary, [e.input_ids for e in self._rationales],
                                    batch_size=s.batch_size, max_input_length=s.max_input_length,
                                    max_decode_length=s.rationale_max_decode_length, merge_shapes=False)
            self._write_predictions(f"rationales_step{step}.jsonl", self._rationales, rationales)
        self.metrics = with_step_results(self.metrics, step=step, results=results, dataset=self.dataset,
                                         task=self.label_task, baseline=baseline)
        if self.write:
            write_metrics(self.output_dir, self.metrics)
        return results

    def _score(self, targets: list[str], predictions: list[str]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for fn in self._metric_fns:
            metrics.update(self._score_with(fn, targets, predictions))
        return metrics

    def _correct(self, targets: list[str], predictions: list[str]) -> list[bool]:
        """Per-example correctness under the task's first accuracy metric (for paired statistics)."""
        fn = self._metric_fns[0]
        return [bool(self._score_with(fn, [t], [p]).get("accuracy", 0.0) > 0.5) for t, p in zip(targets, predictions)]

    def _score_with(self, fn: Callable, targets: list[str], predictions: list[str]) -> dict[str, float]:
        post_targets = [self._postprocess(t, example={}, is_target=True) for t in targets]
        post_predictions = [self._postprocess(p, example={}, is_target=False) for p in predictions]
        return {name: float(getattr(v, "value", v)) for name, v in fn(post_targets, post_predictions).items()}

    def _write_predictions(self, name: str, examples: Sequence[Any], predictions: list[str],
                           correct: Sequence[bool] | None = None) -> None:
        if self.write:
            from distill.input_pipeline import prediction_records

            records = prediction_records(examples, predictions)
            if correct is not None:
                records = ({**record, "correct": ok} for record, ok in zip(records, correct))
            write_jsonl(predictions_path(self.output_dir, name), records)

    def mark_early_stop(self, step: int) -> None:
        """Records in metrics.json that training stopped early at `step` (a relaunch does not resume)."""
        self.metrics = {**self.metrics, "early_stopped_at": step}
        if self.write:
            write_metrics(self.output_dir, self.metrics)

    def has_step(self, step: int) -> bool:
        """Whether metrics.json already holds every split of this evaluator at `step`."""
        done = self.metrics.get("evals", {}).get(str(step), {})
        return all(split in done for split in self._splits)


def example_requests(label_task: str, rationale_task: str | None,
                     settings: EvalSettings) -> list[tuple[str, str, int | None]]:
    """(task, split, max_examples) of every example list an Evaluator reads: the label splits, then the rationales."""
    requests = [(label_task, split, settings.max_examples) for split in settings.splits]
    if rationale_task and rationale_task != label_task and settings.splits and settings.num_rationale_examples > 0:
        requests.append((rationale_task, settings.splits[-1], settings.num_rationale_examples))
    return requests


def with_step_results(data: dict[str, Any], *, step: int, results: dict[str, dict[str, float]], dataset: str,
                      task: str, baseline: bool = False) -> dict[str, Any]:
    """metrics.json content with one step's results added and the top-level summary refreshed.

    The summary (`latest_step`, `<split>_accuracy`) describes the newest step
    evaluated, so after training it holds the final test accuracy; `best` is
    the validation-selected step (see `best_step`). A baseline (the initial
    model) is kept apart under "baseline".
    """
    if baseline:
        return {**data, "dataset": dataset, "task": task,
                "baseline": {"step": step, **{f"{split}_accuracy": m["accuracy"] for split, m in results.items()
                                              if "accuracy" in m}, "splits": results}}
    data = {**data, "evals": {k: dict(v) for k, v in data.get("evals", {}).items()}}
    evals = data["evals"]
    evals.setdefault(str(step), {}).update(results)
    latest = max(int(s) for s in evals)
    data.update({"dataset": dataset, "task": task, "latest_step": latest})
    for split, metrics in evals[str(latest)].items():
        if "accuracy" in metrics:
            data[f"{split}_accuracy"] = metrics["accuracy"]
    data["evals"] = {k: evals[k] for k in sorted(evals, key=int)}
    best = best_step(data["evals"])
    if best is not None:
        data["best"] = best
    return data


def best_step(evals: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any] | None:
    """The step with the highest validation accuracy (ties: the earliest), or None without validation.

    Only validation decides: the test accuracy is reported for the chosen
    step, never compared. Returns {"step", "validation_accuracy", "test_accuracy"?}.
    """
    scored = [(int(step), splits["validation"]["accuracy"]) for step, splits in evals.items()
              if "accuracy" in splits.get("validation", {})]
    if not scored:
        return None
    step, accuracy = max(scored, key=lambda item: (item[1], -item[0]))
    best: dict[str, Any] = {"step": step, "validation_accuracy": accuracy}
    test = evals[str(step)].get("test", {})
    if "accuracy" in test:
        best["test_accuracy"] = test["accuracy"]
    return best
