"""`distill report results.csv`: the paper-style table and plots from a sweep.

Reads the `results.csv` that `distill sweep` writes (one row per finished run,
columns `RESULT_COLUMNS`), averages over seeds, and writes into `--out`:

- `results.md`: one table per dataset, rows (model, training-data fraction),
  one column per method, cells `mean [95% interval] (n)`: test accuracy in
  percent at each run's validation-selected step, the interval a bootstrap
  over test examples and seeds (distill/bootstrap.py) from the runs'
  per-example correctness files (`mean ± std` where a run has none); then
  the paired differences (step-by-step vs standard fine-tuning and vs
  standard distillation at the same point and seeds) with their 95%
  interval and permutation p-value, * where the interval excludes 0;
- `fraction_<dataset>.png`: accuracy against the fraction of training data,
  one subplot per model size and one line per method with its interval as
  a band and the pre-training baseline as x markers (the paper's
  data-efficiency figures);
- `model_size_<dataset>.png`: accuracy against model size at the largest
  fraction the sweep ran, one line per method.

With `--data-dir` the teacher's own test accuracy (its cached few-shot CoT
labels scored by the dataset's metric) is a dashed reference line and a line
under each table. Every PNG carries its series labels as JSON in the PNG text
chunk "Description", so tests and scripts can check what was plotted without
reading pixels.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import statistics
import sys
from typing import Iterable, Sequence

from distill.atomic import write_atomically
from distill.bootstrap import Interval, PairedDifference, accuracy_interval, paired_difference
from distill.errors import UserError
from distill.jsonl import read_jsonl

RESULT_COLUMNS = (
    "dataset", "method", "model", "train_fraction", "seed", "accuracy",
    "steps", "train_seconds", "tokens_per_second", "model_dir",
    "selected_step", "final_accuracy", "baseline_accuracy", "correctness_file",
)
# Columns a results.csv of an older sweep may lack (read as unknown).
OPTIONAL_COLUMNS = ("selected_step", "final_accuracy", "baseline_accuracy", "correctness_file")
# (step-by-step method, baseline method) pairs compared at the same point and seeds.
PAIRS = (("step_by_step_gt", "standard_gt"), ("step_by_step_llm", "standard_gt"),
         ("step_by_step_gt", "standard_llm"), ("step_by_step_llm", "standard_llm"))
METHOD_NAMES = {
    "standard_gt": "Standard fine-tuning",
    "standard_llm": "Standard distillation",
    "step_by_step_gt": "Step-by-step (gold labels)",
    "step_by_step_llm": "Step-by-step (LLM labels)",
}
# Smallest first; sizes not listed sort after these, alphabetically.
MODEL_ORDER = ("micro", "tiny", "small", "base", "large", "xl", "xxl")


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """One finished run, as `distill sweep` records it."""

    dataset: str
    method: str
    model: str
    train_fraction: float
    seed: int
    accuracy: float  # fraction in [0, 1]
    steps: int
    train_seconds: float
    tokens_per_second: float
    model_dir: str
    selected_step: int | None = None
    final_accuracy: float = math.nan
    baseline_accuracy: float = math.nan
    correctness_file: str = ""

    @property
    def point(self) -> tuple[str, str, float]:
        return self.dataset, self.model, self.train_fraction


@dataclasses.dataclass(frozen=True)
class Summary:
    """Seeds of one (dataset, method, model, train_fraction) point, averaged.

    interval: the 95% bootstrap interval over test examples and seeds (None
    when some seed has no per-example correctness file); baseline: the mean
    pre-distillation accuracy of the initial checkpoint (NaN when unknown).
    """

    dataset: str
    method: str
    model: str
    train_fraction: float
    mean: float  # fraction in [0, 1]
    std: float | None  # None with a single seed
    seeds: int
    interval: Interval | None = None
    baseline: float = math.nan


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A step-by-step method against a baseline method at one point, on the seeds both have."""

    dataset: str
    model: str
    train_fraction: float
    method: str
    against: str
    difference: PairedDifference


def read_results(path: str) -> list[ResultRow]:
    """Parses results.csv; a missing file, column or bad number is a UserError naming the line."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such results file; run `distill sweep` first, it writes results.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in RESULT_COLUMNS if c not in (reader.fieldnames or []) and c not in OPTIONAL_COLUMNS]
        if missing:
            raise UserError(f"{path}: missing columns {', '.join(missing)}; expected {', '.join(RESULT_COLUMNS)}")
        rows = []
        for line_number, record in enumerate(reader, start=2):
            try:
                optional = {key: record.get(key) or "" for key in OPTIONAL_COLUMNS}
                accuracy = float(record["accuracy"])
                if not math.isfinite(accuracy):
                    raise ValueError(f"accuracy {record['accuracy']!r} is not a finite number")
                rows.append(ResultRow(
                    dataset=record["dataset"], method=record["method"], model=record["model"],
                    train_fraction=float(record["train_fraction"]), seed=int(record["seed"]),
                    accuracy=accuracy, steps=int(record["steps"]),
                    train_seconds=float(record["train_seconds"] or "nan"),
                    tokens_per_second=float(record["tokens_per_second"] or "nan"),
                    model_dir=record["model_dir"],
                    selected_step=int(optional["selected_step"]) if optional["selected_step"] else None,
                    final_accuracy=float(optional["final_accuracy"] or "nan"),
                    baseline_accuracy=float(optional["baseline_accuracy"] or "nan"),
                    correctness_file=optional["correctness_file"],
                ))
            except (TypeError, ValueError) as err:
                raise UserError(f"{path}:{line_number}: bad value ({err}); fix or delete that row") from None
    return rows


def _model_key(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


def _method_key(method: str) -> tuple[int, str]:
    order = list(METHOD_NAMES)
    return (order.index(method) if method in order else len(order), method)


def read_correctness(path: str) -> list[float]:
    """The per-example `correct` flags of a predictions file, in order (1.0 / 0.0)."""
    flags = []
    for number, record in read_jsonl(path, hint="rerun the sweep to write it"):
        if not isinstance(record.get("correct"), bool):
            raise UserError(f"{path}:{number}: no boolean \"correct\" field; written by an older distill? "
                            "Re-evaluate the run with `distill eval`")
        flags.append(1.0 if record["correct"] else 0.0)
    return flags


def _correctness(rows: Sequence[ResultRow]) -> list[list[float]] | None:
    """Each row's correctness vector, or None when some row has none."""
    if not all(row.correctness_file and os.path.isfile(row.correctness_file) for row in rows):
        return None
    return [read_correctness(row.correctness_file) for row in rows]


def summarize(rows: Iterable[ResultRow]) -> list[Summary]:
    """Mean, std and bootstrap interval over seeds per point, sorted dataset, model, fraction, method."""
    groups: dict[tuple[str, str, str, float], list[ResultRow]] = {}
    for row in rows:
        groups.setdefault((row.dataset, row.method, row.model, row.train_fraction), []).append(row)
    summaries = []
    for (d, m, size, f), members in groups.items():
        members.sort(key=lambda r: r.seed)
        values = [r.accuracy for r in members]
        correct = _correctness(members)
        baselines = [r.baseline_accuracy for r in members if math.isfinite(r.baseline_accuracy)]
        summaries.append(Summary(
            dataset=d, method=m, model=size, train_fraction=f, mean=statistics.fmean(values),
            std=statistics.stdev(values) if len(values) > 1 else None, seeds=len(values),
            interval=accuracy_interval(correct) if correct else None,
            baseline=statistics.fmean(baselines) if baselines else math.nan))
    return sorted(summaries, key=lambda s: (s.dataset, _model_key(s.model), s.train_fraction, _method_key(s.method)))


def compare(rows: Sequence[ResultRow]) -> list[Comparison]:
    """Paired differences (see PAIRS) at every point where both methods ran the same seeds with correctness."""
    by_key = {(r.point, r.method, r.seed): r for r in rows}
    comparisons = []
    for point in sorted({r.point for r in rows}, key=lambda p: (p[0], _model_key(p[1]), p[2])):
        for method, against in PAIRS:
            seeds = sorted(seed for (p, m, seed) in by_key if p == point and m == method
                           and (point, against, seed) in by_key)
            if not seeds:
                continue
            a = _correctness([by_key[(point, method, seed)] for seed in seeds])
            b = _correctness([by_key[(point, against, seed)] for seed in seeds])
            if a is None or b is None:
                continue
            comparisons.append(Comparison(dataset=point[0], model=point[1], train_fraction=point[2], method=method,
                                          against=against, difference=paired_difference(a, b)))
    return comparisons


def teacher_accuracy(dataset: str, data_dir: str) -> float | None:
    """The teacher's test accuracy from its cached outputs; None without teacher outputs.

    Examples whose completion did not parse count as wrong (their label is
    scored as the empty string), as the paper scores the prompted LLM.
    """
    from distill import metrics
    from distill.data import datasets

    examples = datasets.load_examples(dataset, "test", data_dir, with_teacher=True)
    if not examples or "teacher_label" not in examples[0]:
        return None
    targets = [e["label"] for e in examples]
    predictions = [e.get("teacher_label") or "" for e in examples]
    return float(metrics.metric_fn_for(dataset)(targets, predictions)["accuracy"])


def _cell(summary: Summary | None) -> str:
    if summary is None:
        return "-"
    text = f"{100 * summary.mean:.1f}"
    if summary.interval is not None:
        text += f" [{100 * summary.interval.low:.1f}, {100 * summary.interval.high:.1f}]"
    elif summary.std is not None:
        text += f" ± {100 * summary.std:.1f}"
    return f"{text} (n={summary.seeds})"


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """Paired differences in points with their 95% interval and p-value; * where the interval excludes 0."""
    if not comparisons:
        return ""
    lines = ["## Paired differences", "",
             "Test accuracy of the first method minus the second, in points, on the same seeds and test "
             "examples: 95% paired-bootstrap interval, two-sided paired permutation p-value. "
             "* marks an interval that excludes 0.", "",
             "| dataset | model | data | comparison | difference | 95% interval | p | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in comparisons:
        d = c.difference
        mark = " *" if d.interval.excludes_zero() else ""
        names = f"{METHOD_NAMES.get(c.method, c.method)} - {METHOD_NAMES.get(c.against, c.against)}"
        lines.append(f"| {c.dataset} | {c.model} | {100 * c.train_fraction:g}% | {names} | "
                     f"{100 * d.interval.estimate:+.1f}{mark} | [{100 * d.interval.low:+.1f}, "
                     f"{100 * d.interval.high:+.1f}] | {d.p_value:.3f} | {d.seeds} |")
    return "\n".join(lines) + "\n"


def markdown_table(summaries: Sequence[Summary], teacher: dict[str, float] | None = None) -> str:
    """One section per dataset: rows (model, fraction), one column per method."""
    teacher = teacher or {}
    lines = ["# Results", "",
             "Test accuracy in percent at the validation-selected step: mean over seeds with its 95% bootstrap "
             "interval over test examples and seeds [low, high] (± std where no per-example results exist; "
             "n = seeds).", ""]
    for dataset in sorted({s.dataset for s in summaries}):
        rows = [s for s in summaries if s.dataset == dataset]
        methods = sorted({s.method for s in rows}, key=_method_key)
        by_point = {(s.model, s.train_fraction, s.method): s for s in rows}
        points = sorted({(s.model, s.train_fraction) for s in rows}, key=lambda p: (_model_key(p[0]), p[1]))
        lines += [f"## {dataset}", ""]
        if dataset in teacher:
            lines += [f"Teacher (few-shot CoT, cached outputs): {100 * teacher[dataset]:.1f}", ""]
        lines.append("| model | train fraction | " + " | ".join(METHOD_NAMES.get(m, m) for m in methods) + " |")
        lines.append("| --- | --- | " + " | ".join("---" for _ in methods) + " |")
        for model, fraction in points:
            cells = [_cell(by_point.get((model, fraction, m))) for m in methods]
            lines.append(f"| {model} | {100 * fraction:g}% | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _save(figure, path: str, series: dict[str, list[str]]) -> None:
    """Saves a PNG atomically with the plotted series' labels in its text chunk."""
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100, metadata={"Description": json.dumps(series)})
    write_atomically(path, png.getvalue())


def _errorbar(axis, xs: list, summaries: list[Summary], label: str) -> list[str]:
    """The mean line, its 95% interval as a band (std bars without one), the baseline as markers.

    Returns the series labels drawn."""
    ys = [100 * s.mean for s in summaries]
    if all(s.interval is not None for s in summaries):
        line = axis.plot(xs, ys, marker="o", label=label)[0]
        axis.fill_between(xs, [100 * s.interval.low for s in summaries], [100 * s.interval.high for s in summaries],
                          color=line.get_color(), alpha=0.2, label=f"{label}, 95% interval")
        labels = [label, f"{label}, 95% interval"]
    else:
        line = axis.errorbar(xs, ys, yerr=[100 * (s.std or 0.0) for s in summaries], marker="o", capsize=3,
                             label=label)[0]
        labels = [label]
    base = [(x, 100 * s.baseline) for x, s in zip(xs, summaries) if math.isfinite(s.baseline)]
    if base:
        axis.scatter(*zip(*base), marker="x", color=line.get_color(), label=f"{label}, before training")
        labels.append(f"{label}, before training")
    return labels


def plot_fraction_curves(summaries: Sequence[Summary], out_dir: str,
                         teacher: dict[str, float] | None = None) -> dict[str, dict[str, list[str]]]:
    """fraction_<dataset>.png per dataset; returns {path: {subplot title: [series labels]}}."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    teacher = teacher or {}
    written = {}
    for dataset in sorted({s.dataset for s in summaries}):
        rows = [s for s in summaries if s.dataset == dataset]
        models = sorted({s.model for s in rows}, key=_model_key)
        figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
        series = {}
        for axis, model in zip(axes[0], models):
            title = f"{dataset}, T5 {model}"
            series[title] = []
            for method in sorted({s.method for s in rows if s.model == model}, key=_method_key):
                points = sorted((s for s in rows if s.model == model and s.method == method),
                                key=lambda s: s.train_fraction)
                label = METHOD_NAMES.get(method, method)
                series[title] += _errorbar(axis, [100 * s.train_fraction for s in points], points, label)
            if dataset in teacher:
                axis.axhline(100 * teacher[dataset], linestyle="--", color="gray", label="Teacher (few-shot CoT)")
                series[title].append("Teacher (few-shot CoT)")
            fractions = sorted({100 * s.train_fraction for s in rows if s.model == model})
            axis.set_xscale("log", base=2)  # The paper's fractions double: 12.5, 25, 50, 100.
            axis.set_xticks(fractions, [f"{f:g}" for f in fractions])
            axis.minorticks_off()
            axis.set(title=title, xlabel="training data (%)", ylabel="test accuracy (%)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize="small")
        figure.tight_layout()
        path = os.path.join(out_dir, f"fraction_{dataset}.png")
        _save(figure, path, series)
        plt.close(figure)
        written[path] = series
    return written


def plot_model_sizes(summaries: Sequence[Summary], out_dir: str,
                     teacher: dict[str, float] | None = None) -> dict[str, dict[str, list[str]]]:
    """model_size_<dataset>.png at each dataset's largest fraction; same return shape as above."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    teacher = teacher or {}
    written = {}
    for dataset in sorted({s.dataset for s in summaries}):
        full = max(s.train_fraction for s in summaries if s.dataset == dataset)
        rows = [s for s in summaries if s.dataset == dataset and s.train_fraction == full]
        models = sorted({s.model for s in rows}, key=_model_key)
        figure, axis = plt.subplots(figsize=(5, 4))
        title = f"{dataset}, {100 * full:g}% of training data"
        series = {title: []}
        for method in sorted({s.method for s in rows}, key=_method_key):
            points = sorted((s for s in rows if s.method == method), key=lambda s: _model_key(s.model))
            label = METHOD_NAMES.get(method, method)
            series[title] += _errorbar(axis, [models.index(s.model) for s in points], points, label)
        if dataset in teacher:
            axis.axhline(100 * teacher[dataset], linestyle="--", color="gray", label="Teacher (few-shot CoT)")
            series[title].append("Teacher (few-shot CoT)")
        axis.set_xticks(range(len(models)), [f"T5 {m}" for m in models])
        axis.set(title=title, xlabel="student model", ylabel="test accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
        figure.tight_layout()
        path = os.path.join(out_dir, f"model_size_{dataset}.png")
        _save(figure, path, series)
        plt.close(figure)
        written[path] = series
    return written


def write_report(results_csv: str, out_dir: str, *, data_dir: str | None = None) -> list[str]:
    """Writes results.md and the PNGs into out_dir; returns the written paths."""
    rows = read_results(results_csv)
    if not rows:
        raise UserError(f"{results_csv}: no finished runs in it yet; run `distill sweep` (it resumes) first")
    summaries = summarize(rows)
    teacher = {}
    if data_dir:
        for dataset in sorted({r.dataset for r in rows}):
            accuracy = teacher_accuracy(dataset, data_dir)
            if accuracy is not None and not math.isnan(accuracy):
                teacher[dataset] = accuracy
    os.makedirs(out_dir, exist_ok=True)
    table_path = os.path.join(out_dir, "results.md")
    write_atomically(table_path, markdown_table(summaries, teacher) + "\n" + comparison_table(compare(rows)))
    plots = plot_fraction_curves(summaries, out_dir, teacher)
    plots.update(plot_model_sizes(summaries, out_dir, teacher))
    return [table_path, *plots]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill report", description=__doc__.split("\n")[0])
    parser.add_argument("results_csv", help="results.csv written by `distill sweep`")
    parser.add_argument("--out", default=None, help="output folder (default: beside results.csv)")
    parser.add_argument("--data-dir", default=None,
                        help="the paper's data root, to draw the teacher's accuracy as a reference line")
    args = parser.parse_args(argv)
    out_dir = args.out or os.path.dirname(os.path.abspath(args.results_csv))
    for path in write_report(args.results_csv, out_dir, data_dir=args.data_dir):
        print(path)
    return 0


if __name__ == "__main__":
    from distill import cli  # One-line `error: ...` for a UserError, as under `distill`.

    sys.exit(cli.main(["report", *sys.argv[1:]]))
