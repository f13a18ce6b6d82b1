"""`distill sweep`: the paper's comparisons as one resumable command.

A grid of dataset x method x training-data fraction x seed x model size, each
point trained by `distill.train.train` from the shipped gin experiment files
(`experiments/<dataset>/<method>[_tiny].gin`, plus `models/t5_1_1_<size>.gin`
for pretrained sizes) in its own model dir
`<sweep dir>/runs/<dataset>-<method>-<model>-frac<f>-seed<s>`.

Runs happen one after another in this process, so TensorFlow start-up, task
registration and JAX's compilation cache (persisted under
`<sweep dir>/.jax_cache`) are paid once where shapes repeat. A run whose
`metrics.json` says finished (at the requested step count, if one is given)
is skipped, so an interrupted sweep resumes where it stopped; a run that
crashes is recorded in `<model dir>/error.txt` and the sweep goes on.
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

from distill.errors import UserError
from distill.report import RESULT_COLUMNS

METHODS = ("standard_gt", "standard_llm", "step_by_step_gt", "step_by_step_llm")
PRETRAINED_SIZES = ("small", "base", "large", "xl", "xxl")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a model-size name becomes gin: the experiment file variant, extra files and bindings.

    tiny=True uses `<method>_tiny.gin` (from scratch, CPU-sized); otherwise
    `<method>.gin` (the paper's setup), whose INITIAL_CHECKPOINT_PATH must be
    bound (by `bindings` or --checkpoint SIZE=PATH).
    """

    name: str
    tiny: bool = False
    gin_files: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()


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
    return files, [*bindings, *spec.bindings, *extra_bindings]


class RunFn(Protocol):
    """Trains one run from gin files + bindings; writes metrics.json into its MODEL_DIR."""

    def __call__(self, gin_files: list[str], bindings: list[str]) -> None: ...


def train_with_gin(gin_files: list[str], bindings: list[str]) -> None:
    """The real RunFn: parse the gin config afresh and call distill.train.train in this process."""
    import gin

    from distill import gin_paths, train

    gin.clear_config()
    gin.add_config_file_search_path(gin_paths.gin_configs_dir())
    train.register_gin_configurables()
    gin.parse_config_files_and_bindings(gin_files, bindings)
    try:
        train.train()
    finally:
        gin.clear_config()


def read_run_metrics(model_dir: str) -> dict | None:
    """The run's metrics.json as a dict, or None when absent or unreadable (a crash mid-write)."""
    path = os.path.join(model_dir, "metrics.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def is_finished(metrics: dict | None, steps: int | None) -> bool:
    """Finished, and (when steps is given) at least that far: a larger --steps resumes the run."""
    if not metrics or not metrics.get("finished"):
        return False
    return steps is None or int(metrics.get("step", 0)) >= steps


def result_row(point: GridPoint, model_dir: str, metrics: dict) -> dict:
    """One results.csv row from a finished run's metrics.json."""
    return {
        "dataset": point.dataset, "method": point.method, "model": point.model,
        "train_fraction": point.train_fraction, "seed": point.seed,
        "accuracy": metrics["test_accuracy"], "steps": metrics["step"],
        "train_seconds": metrics.get("train_seconds", ""), "tokens_per_second": metrics.get("tokens_per_second", ""),
        "model_dir": model_dir,
    }


def write_results(rows: Iterable[dict], path: str) -> None:
    """results.csv, written to a temp file and renamed so a reader never sees half a table."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


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
        if is_finished(read_run_metrics(model_dir), steps):
            outcome.skipped.append(point.run_name)
            log(f"[{index}/{len(points)}] {point.run_name}: finished earlier, skipped")
            continue
        files, bindings = gin_config_for(point, models[point.model], model_dir, steps=steps,
                                         data_dir=data_dir, extra_bindings=extra_bindings)
        log(f"[{index}/{len(points)}] {point.run_name}: training ({' '.join(files)})")
        start = time.time()
        try:
            run_fn(files, bindings)
        except UserError:
            raise
        except Exception:  # One broken run must not lose the rest of a long sweep.
            os.makedirs(model_dir, exist_ok=True)
            with open(os.path.join(model_dir, "error.txt"), "w", encoding="utf-8") as handle:
                handle.write(traceback.format_exc())
            outcome.failed.append(point.run_name)
            log(f"[{index}/{len(points)}] {point.run_name}: FAILED, see {model_dir}/error.txt")
            continue
        metrics = read_run_metrics(model_dir)
        if not is_finished(metrics, steps):
            outcome.failed.append(point.run_name)
            log(f"[{index}/{len(points)}] {point.run_name}: FAILED, no finished metrics.json in {model_dir}")
            continue
        outcome.trained.append(point.run_name)
        log(f"[{index}/{len(points)}] {point.run_name}: test accuracy {metrics['test_accuracy']:.3f} "
            f"({time.time() - start:.0f} s)")
    for point in points:
        model_dir = os.path.join(sweep_dir, "runs", point.run_name)
        metrics = read_run_metrics(model_dir)
        if is_finished(metrics, steps):
            outcome.rows.append(result_row(point, model_dir, metrics))
    write_results(outcome.rows, outcome.results_csv)
    return outcome


def enable_compilation_cache(cache_dir: str) -> None:
    """Persist XLA executables across runs (and across resumed sweeps): same shapes compile once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _parse_checkpoints(items: Sequence[str]) -> dict[str, str]:
    checkpoints = {}
    for item in items:
        size, sep, path = item.partition("=")
        if not sep or size not in PRETRAINED_SIZES or not path:
            raise UserError(f"--checkpoint {item!r}: expected SIZE=PATH with SIZE in {', '.join(PRETRAINED_SIZES)}")
        checkpoints[size] = path
    return checkpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill sweep", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="sweep folder: runs/<name>/ model dirs and results.csv")
    parser.add_argument("--datasets", nargs="+", default=["svamp"], help="svamp cqa esnli anli1")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--models", nargs="+", default=["tiny"], help="tiny (from scratch) or small..xxl")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
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
    enable_compilation_cache(os.path.join(os.path.abspath(args.out), ".jax_cache"))
    outcome = run_sweep(points, os.path.abspath(args.out), models=models, steps=args.steps,
                        data_dir=args.data_dir, extra_bindings=args.gin)
    print(f"{len(outcome.trained)} trained, {len(outcome.skipped)} skipped (finished earlier), "
          f"{len(outcome.failed)} failed; {len(outcome.rows)} rows in {outcome.results_csv}")
    print(f"next: distill report {outcome.results_csv}")
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    from distill import cli  # One-line `error: ...` for a UserError, as under `distill`.

    sys.exit(cli.main(["sweep", *sys.argv[1:]]))
