"""`distill sweep`: the paper's comparisons as one resumable command.

A grid of dataset x method x training-data fraction x seed x model size, each
point trained by `distill.train.train` from the shipped gin experiment files
(`experiments/<dataset>/<method>[_tiny].gin`, plus `models/t5_1_1_<size>.gin`
for pretrained sizes) in its own model dir
`<sweep dir>/runs/<dataset>-<method>-<model>-frac<f>-seed<s>`.

Runs happen one after another in this process, so TensorFlow start-up, task
registration and JAX's compilation cache (persisted under
`<sweep dir>/.jax_cache`) are paid once where shapes repeat. A run is
finished once `train()` has returned for it, recorded with its wall time and
throughput in `<model dir>/sweep.json` (a `finished` flag in metrics.json
counts too), at the requested step count if one is given. Finished runs are
skipped, so an interrupted sweep resumes where it stopped (a larger --steps
resumes each run from its checkpoint); a run that crashes is recorded in
`<model dir>/error.txt` and the sweep goes on.
Every finished run is then collected into `<sweep dir>/results.csv`
(columns `distill.report.RESULT_COLUMNS`), the input of `distill report`.

    distill sweep --out sweeps/svamp --datasets svamp --models tiny \\
        --fractions 0.125 0.25 0.5 1.0 --seeds 0 1 2 --steps 2000
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import logging
import os
import sys
import time
import traceback
from typing import Callable, Iterable, Protocol, Sequence

from distill import run_dir
from distill.atomic import AtomicFile, write_atomically
from distill.compilation_cache import enable_compilation_cache
from distill.errors import UserError
from distill.heap import limit_malloc_arenas
from distill.metric_writer import steady_mean
from distill.report import RESULT_COLUMNS

SWEEP_RECORD = "sweep.json"
METHODS = ("standard_gt", "standard_llm", "step_by_step_gt", "step_by_step_llm")
PRETRAINED_SIZES = ("small", "base", "large", "xl", "xxl")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a model-size name becomes gin: the experiment file variant, extra files and bindings.

    tiny=True uses `<method>_tiny.gin` (from scratch, CPU-sized); otherwise
    `<method>.gin` (the paper's setup), whose INITIAL_CHECKPOINT_PATH must be
    bound (by `bindings` or --checkpoint SIZE=PATH). `method_bindings` holds
    (method, binding) pairs bound after `bindings` for that method's runs only.
    """

    name: str
    tiny: bool = False
    gin_files: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()
    method_bindings: tuple[tuple[str, str], ...] = ()


def default_model_spec(name: str, checkpoint: str | None = None) -> ModelSpec:
    """tiny -> the _tiny experiment files; small..xxl -> the paper's files + models/t5_1_1_<size>.gin."""
    if name == "tiny":
        return ModelSpec("tiny", tiny=True)
    if name in PRETRAINED_SIZES:
        bindings = (f"INITIAL_CHECKPOINT_PATH = {checkpoint!r}",) if checkpoint else ()
        return ModelSpec(name, gin_files=(f"models/t5_1_1_{name}.gin",), bindings=bindings)
    raise UserError(f"unknown model size {name!r}; use tiny or one of {', '.join(PRETRAINED_SIZES)}")


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One run of the sweep."""

    dataset: str
    method: str
    model: str
    train_fraction: float
    seed: int

    @property
    def run_name(self) -> str:
        return f"{self.dataset}-{self.method}-{self.model}-frac{self.train_fraction:g}-seed{self.seed}"


def make_grid(datasets: Sequence[str], methods: Sequence[str], models: Sequence[str],
              fractions: Sequence[float], seeds: Sequence[int]) -> list[GridPoint]:
    """The full product, in a stable order (dataset, model, fraction, seed, method)."""
    for method in methods:
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; use {', '.join(METHODS)}")
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"train fraction {fraction} is outside (0, 1]; e.g. 0.125 0.25 0.5 1.0")
    return [GridPoint(d, m, size, f, s)
            for d, size, f, s, m in itertools.product(datasets, models, fractions, seeds, methods)]


def gin_config_for(point: GridPoint, spec: ModelSpec, model_dir: str, *, steps: int | None,
                   data_dir: str | None, extra_bindings: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(gin files, bindings) that train one grid point; later bindings win."""
    suffix = "_tiny" if spec.tiny else ""
    files = [f"experiments/{point.dataset}/{point.method}{suffix}.gin", *spec.gin_files]
    bindings = [f"MODEL_DIR = {model_dir!r}", f"TRAIN_FRACTION = {point.train_fraction!r}",
                f"SEED = {point.seed}"]
    if steps is not None:
        bindings.append(f"TRAIN_STEPS = {steps}")
    if data_dir is not None:
        bindings.append(f"DATA_DIR = {data_dir!r}")
    own = [binding for method, binding in spec.method_bindings if method == point.method]
    return files, [*bindings, *spec.bindings, *own, *extra_bindings]


class RunFn(Protocol):
    """Trains one run from gin files + bindings (writing metrics.json into its MODEL_DIR).

    Returns train()'s summary dict (at least "step"; "preempted" True when it
    stopped early), or None.
    """

    def __call__(self, gin_files: list[str], bindings: list[str]) -> dict | None: ...


def train_with_gin(gin_files: list[str], bindings: list[str]) -> dict | None:
    """The real RunFn: parse the gin config afresh and call distill.train.train in this process."""
    import gin

    from distill import gin_bindings
    from distill.train import train

    gin_bindings.parse_gin(gin_files, bindings, entry_points={"train": train})
    try:
        gin_bindings.check_required_macros()
        return gin_bindings.configurable(train, "train")(config_text=gin.config_str())
    finally:
        gin.clear_config()


def _read_json(path: str) -> dict | None:
    """A JSON object file, or None when absent or unreadable (a crash mid-write)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _metrics(model_dir: str) -> dict | None:
    """The run's metrics.json (distill/run_dir.py's file), or None when absent or unreadable."""
    return _read_json(os.path.join(model_dir, run_dir.METRICS_FILE))


def run_record(model_dir: str) -> dict | None:
    """What is known about a run: metrics.json (the trainer's) merged with sweep.json (ours).

    sweep.json is written by the sweep once train() has returned without
    being preempted: {"finished": true, "step", "train_seconds",
    "tokens_per_second"}; a metrics.json "finished" flag counts as well.
    """
    metrics = _metrics(model_dir)
    if metrics is None:
        return None
    return {**metrics, **(_read_json(os.path.join(model_dir, SWEEP_RECORD)) or {})}


def is_finished(record: dict | None, steps: int | None) -> bool:
    """Finished, with a test accuracy, and (when steps is given) that far: a larger --steps resumes."""
    if not record or not record.get("finished") or "test_accuracy" not in record:
        return False
    if "early_stopped_at" in record:  # stopped on purpose: more steps would not be trained
        return True
    return steps is None or int(record.get("step", record.get("latest_step", 0))) >= steps


def tokens_per_second_from_events(model_dir: str) -> float | None:
    """Mean of the run's perf/tokens_per_sec TensorBoard scalars, the first (compiling) interval left out.

    Only for a run whose train() call reported no throughput (it resumed at its
    last step); it imports TensorFlow, which train()'s own figure avoids.
    """
    import glob

    import tensorflow as tf

    values = []
    for path in sorted(glob.glob(os.path.join(model_dir, run_dir.EVENTS_DIR, "**", "events.out.tfevents.*"), recursive=True)):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                values += [v.simple_value for v in event.summary.value if v.tag == "perf/tokens_per_sec"]
        except tf.errors.DataLossError:  # A truncated last record: keep what was read.
            continue
    return steady_mean(values)


def _write_record(model_dir: str, result: dict | None, train_seconds: float) -> None:
    metrics = _metrics(model_dir) or {}
    result = result or {}
    record = {
        "finished": True,
        "step": int(result.get("step", metrics.get("step", metrics.get("latest_step", 0)))),
        "train_seconds": float(metrics.get("train_seconds", result.get("train_seconds", train_seconds))),
        "tokens_per_second": metrics.get("tokens_per_second", result.get("tokens_per_second")),
    }
    if record["tokens_per_second"] is None:
        record["tokens_per_second"] = tokens_per_second_from_events(model_dir)
    write_atomically(os.path.join(model_dir, SWEEP_RECORD), json.dumps(record, indent=1))


def result_row(point: GridPoint, model_dir: str, record: dict) -> dict:
    """One results.csv row from a finished run's record.

    `accuracy` is the test accuracy at the validation-selected step (metrics.json
    "best"; the final step's when the run evaluated no validation split);
    `final_accuracy` the last step's, `baseline_accuracy` the initial model's.
    """
    tokens = record.get("tokens_per_second")
    best = record.get("best") or {}
    selected = best.get("step") if "test_accuracy" in best else record.get("latest_step")
    correctness = run_dir.predictions_path(model_dir, f"test_step{selected}.jsonl") if selected is not None else ""
    return {
        "dataset": point.dataset, "method": point.method, "model": point.model,
        "train_fraction": point.train_fraction, "seed": point.seed,
        "accuracy": best.get("test_accuracy", record["test_accuracy"]),
        "steps": record.get("step", record.get("latest_step")),
        "train_seconds": record.get("train_seconds", ""), "tokens_per_second": "" if tokens is None else tokens,
        "model_dir": model_dir, "selected_step": "" if selected is None else selected,
        "final_accuracy": record["test_accuracy"],
        "baseline_accuracy": (record.get("baseline") or {}).get("test_accuracy", ""),
        "correctness_file": correctness if correctness and os.path.isfile(correctness) else "",
    }


def write_results(rows: Iterable[dict], path: str) -> None:
    """results.csv, written to a temp file and renamed so a reader never sees half a table."""
    with AtomicFile(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@dataclasses.dataclass
class SweepOutcome:
    """What a sweep did: run names trained, skipped (already finished) and failed, and its rows."""

    trained: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    rows: list[dict] = dataclasses.field(default_factory=list)
    results_csv: str = ""


def run_sweep(points: Sequence[GridPoint], sweep_dir: str, *, models: dict[str, ModelSpec],
              steps: int | None = None, data_dir: str | None = None, extra_bindings: Sequence[str] = (),
              run_fn: RunFn = train_with_gin, log: Callable[[str], None] = print) -> SweepOutcome:
    """Trains every unfinished point, then aggregates all finished ones into results.csv.

    A UserError (bad config, missing data) stops the sweep at once, since it
    would fail every run alike; any other exception fails that run only.
    """
    os.makedirs(os.path.join(sweep_dir, "runs"), exist_ok=True)
    outcome = SweepOutcome(results_csv=os.path.join(sweep_dir, "results.csv"))
    for index, point in enumerate(points, start=1):
        model_dir = os.path.join(sweep_dir, "runs", point.run_name)
        if is_finished(run_record(model_dir), steps):
            outcome.skipped.append(point.run_name)
            log(f"[{index}/{len(points)}] {point.run_name}: finished earlier, skipped")
            continue
        files, bindings = gin_config_for(point, models[point.model], model_dir, steps=steps,
                                         data_dir=data_dir, extra_bindings=extra_bindings)
        log(f"[{index}/{len(points)}] {point.run_name}: training ({' '.join(files)})")
        if os.path.exists(os.path.join(model_dir, SWEEP_RECORD)):  # From a shorter earlier run.
            os.remove(os.path.join(model_dir, SWEEP_RECORD))
        start = time.perf_counter()
        try:
            result = run_fn(files, bindings)
        except UserError:
            raise
        except Exception:  # One broken run must not lose the rest of a long sweep.
            os.makedirs(model_dir, exist_ok=True)
            write_atomically(os.path.join(model_dir, "error.txt"), traceback.format_exc())
            outcome.failed.append(point.run_name)
            log(f"[{index}/{len(points)}] {point.run_name}: FAILED, see {model_dir}/error.txt")
            continue
        seconds = time.perf_counter() - start
        if (result or {}).get("preempted"):
            log(f"[{index}/{len(points)}] {point.run_name}: stopped early (SIGTERM); rerun the sweep to resume")
            outcome.failed.append(point.run_name)
            break
        if _metrics(model_dir) is not None:
            _write_record(model_dir, result, seconds)
        record = run_record(model_dir)
        if not is_finished(record, steps):
            outcome.failed.append(point.run_name)
            log(f"[{index}/{len(points)}] {point.run_name}: FAILED, no test accuracy in "
                f"{os.path.join(model_dir, run_dir.METRICS_FILE)}")
            continue
        outcome.trained.append(point.run_name)
        log(f"[{index}/{len(points)}] {point.run_name}: test accuracy {record['test_accuracy']:.3f} ({seconds:.0f} s)")
    for point in points:
        model_dir = os.path.join(sweep_dir, "runs", point.run_name)
        record = run_record(model_dir)
        if is_finished(record, steps):
            outcome.rows.append(result_row(point, model_dir, record))
    write_results(outcome.rows, outcome.results_csv)
    return outcome


def _parse_checkpoints(items: Sequence[str]) -> dict[str, str]:
    checkpoints = {}
    for item in items:
        size, sep, path = item.partition("=")
        if not sep or size not in PRETRAINED_SIZES or not path:
            raise UserError(f"--checkpoint {item!r}: expected SIZE=PATH with SIZE in {', '.join(PRETRAINED_SIZES)}")
        checkpoints[size] = path
    return checkpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="sweep folder: runs/<name>/ model dirs and results.csv")
    parser.add_argument("--datasets", nargs="+", default=["svamp"], help="svamp cqa esnli anli1 (default: svamp)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"default: {' '.join(METHODS)}")
    parser.add_argument("--models", nargs="+", default=["tiny"], help="tiny (from scratch, default) or small..xxl")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.125, 0.25, 0.5, 1.0],
                        help="training-data fractions (default: 0.125 0.25 0.5 1.0)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="default: 0")
    parser.add_argument("--steps", type=int, default=None, help="TRAIN_STEPS for every run (default: the gin file's)")
    parser.add_argument("--data-dir", default=None, help="data root (default: $DISTILL_DATA_DIR)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="SIZE=PATH",
                        help="Hugging Face T5 folder for a pretrained size, e.g. base=/ckpt/t5-v1_1-base")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING",
                        help="extra gin binding for every run, e.g. 'BATCH_SIZE = 16'")
    args = parser.parse_args(argv)

    checkpoints = _parse_checkpoints(args.checkpoint)
    models = {name: default_model_spec(name, checkpoints.get(name)) for name in args.models}
    points = make_grid(args.datasets, args.methods, args.models, args.fractions, args.seeds)
    logging.getLogger("absl").setLevel(logging.WARNING)
    limit_malloc_arenas()  # it trains in this process, as `distill train` does (distill/heap.py)
    enable_compilation_cache(os.path.join(os.path.abspath(args.out), ".jax_cache"))
    outcome = run_sweep(points, os.path.abspath(args.out), models=models, steps=args.steps,
                        data_dir=args.data_dir, extra_bindings=args.gin)
    print(f"{len(outcome.trained)} trained, {len(outcome.skipped)} skipped (finished earlier), "
          f"{len(outcome.failed)} failed; {len(outcome.rows)} rows in {outcome.results_csv}")
    print(f"next: distill report {outcome.results_csv}")
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    from distill import cli  # One-line `error: ...` for a UserError, as under `distill`.

    sys.exit(cli.main(["sweep", *sys.argv[1:]], process_entry=True))
