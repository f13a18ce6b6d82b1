"""`distill quickstart`: the whole pipeline on SVAMP with a tiny T5 on a laptop CPU.

1. data: the paper's SVAMP split and its cached PaLM chain-of-thought outputs
   (`--data-dir`, else $DISTILL_DATA_DIR, else downloaded into
   ~/.cache/distill/data when the network allows);
2. a SentencePiece vocabulary trained on the SVAMP train split, shared by both
   students so they differ only in the method;
3. T5 v1.1 tiny from scratch (experiments/svamp/*_tiny.gin, rows of 128
   input and 128 target tokens, which SVAMP fits; 64 target tokens for
   standard fine-tuning, whose targets are labels alone), trained with
   standard fine-tuning (gold labels) and with distilling step-by-step (gold
   labels + PaLM rationales) for the same number of steps;
4. greedy decoding of the label task on the test split, equation accuracy;
5. a table (method, accuracy, train time, tokens/s), printed and written to
   OUT/results.md; runs live in OUT/runs/ (rerunning skips finished ones).

At this scale the paper's effect is not guaranteed: its students are
pretrained T5s. The README says what to expect at each scale.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from distill import sweep
from distill.atomic import write_atomically
from distill.compilation_cache import enable_compilation_cache
from distill.cpu import CPUINFO, native_bfloat16
from distill.data import download
from distill.errors import UserError
from distill.heap import limit_malloc_arenas

DEFAULT_STEPS = 200  # about 3 minutes in all on 2 idle cores with avx512_bf16 (README.md, Quickstart).
METHODS = ("standard_gt", "step_by_step_gt")
VOCABULARY_SIZE = 4000  # experiments/tiny.gin's VOCABULARY_SIZE (T5Config.vocab_size 4096 holds it).
HONESTY_NOTE = (
    "Note: a tiny T5 trained from scratch on 700 examples is far from the paper's setting (pretrained "
    "T5 v1.1 base/large); step-by-step is not guaranteed to win here. The paper's own code, run from "
    "scratch on SVAMP (d_model 256, 300 steps), gave standard 0.12 vs step-by-step 0.105 test accuracy. "
    "See the README for the paper's setting and its numbers."
)


def find_data_dir(data_dir: str | None) -> str:
    """A folder holding svamp/svamp_{train,test}.json: the flag, the env var, or a fresh download.

    Without a flag or DISTILL_DATA_DIR the paper's datasets.zip is fetched
    into the user cache once; offline this is one UserError saying how to set
    DISTILL_DATA_DIR.
    """
    chosen = data_dir or os.environ.get("DISTILL_DATA_DIR")
    if chosen:
        if not os.path.isfile(os.path.join(chosen, "svamp", "svamp_train.json")):
            raise UserError(f"{chosen} has no svamp/svamp_train.json; point --data-dir (or DISTILL_DATA_DIR) at "
                            "the folder holding svamp/ from the paper's datasets.zip")
        return chosen
    cache = download.default_data_dir()
    if os.path.isfile(os.path.join(cache, "svamp", "svamp_train.json")):
        return cache
    print(f"no data dir given: downloading the paper's datasets into {cache} ...", flush=True)
    try:
        download.download_datasets(cache, url=download.DATASETS_URL)
    except UserError as err:
        raise UserError(f"no SVAMP data: set DISTILL_DATA_DIR=<folder holding svamp/> (the paper's "
                        f"datasets.zip unpacked) or pass --data-dir; the download failed: {err}") from None
    return cache


def choose_matmul_dtype(requested: str, cpuinfo: str = CPUINFO) -> str:
    """--matmul-dtype: 'auto' is bfloat16 on accelerators and on CPUs with native bfloat16, else float32."""
    if requested != "auto":
        return requested
    import jax

    return "bfloat16" if jax.default_backend() != "cpu" or native_bfloat16(cpuinfo) else "float32"


def results_table(rows: list[dict], results_csv: str) -> str:
    """Markdown table of one row per method (METHODS order), then the paired difference.

    Accuracy is the test accuracy at the validation-selected step, with its
    95% bootstrap interval over the test examples (distill/bootstrap.py).
    """
    from distill import report

    recorded = report.read_results(results_csv)
    intervals = {s.method: s.interval for s in report.summarize(recorded)}
    lines = ["| method | test accuracy | train time (s) | tokens/s | 95% interval | selected step |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in sorted(rows, key=lambda r: METHODS.index(r["method"])):
        interval = intervals.get(row["method"])
        shown = "-" if interval is None else f"[{interval.low:.3f}, {interval.high:.3f}]"
        lines.append(f"| {report.METHOD_NAMES[row['method']]} | {float(row['accuracy']):.3f} | "
                     f"{float(row['train_seconds']):.0f} | {float(row['tokens_per_second']):,.0f} | {shown} | "
                     f"{row['selected_step'] if row['selected_step'] != '' else '-'} |")
    for comparison in report.compare(recorded):
        d = comparison.difference
        verdict = ("the interval excludes 0: a real difference at this scale" if d.interval.excludes_zero()
                   else "the interval includes 0: no real difference at this scale")
        lines += ["", f"Step-by-step minus standard fine-tuning: {100 * d.interval.estimate:+.1f} points, 95% "
                      f"interval [{100 * d.interval.low:+.1f}, {100 * d.interval.high:+.1f}], paired permutation "
                      f"p = {d.p_value:.3f} ({verdict})."]
    return "\n".join(lines)


def run_quickstart(*, data_dir: str | None, out_dir: str, steps: int, matmul_dtype: str = "float32",
                   run_fn: sweep.RunFn = sweep.train_with_gin) -> str:
    """Runs both methods and writes OUT/results.md; returns the table's Markdown."""
    from distill import vocab

    data_dir = find_data_dir(data_dir)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    vocab_path = os.path.join(out_dir, "vocab", "spiece.model")
    if not os.path.isfile(vocab_path):
        print(f"training a {VOCABULARY_SIZE}-piece SentencePiece vocabulary on SVAMP train ...", flush=True)
        vocab.train_vocabulary_for_dataset("svamp", data_dir, size=VOCABULARY_SIZE, out_path=vocab_path)
    spec = sweep.ModelSpec("tiny", tiny=True, bindings=(
        f"VOCABULARY_PATH = {vocab_path!r}",
        # SVAMP's longest input is 104 tokens and 99% of rationales fit in 128 (with this
        # vocabulary): 4x fewer tokens per step than experiments/tiny.gin's 512/256 rows.
        "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 128}",
        # Evaluate halfway and at the end on validation (which selects the step) and test.
        f"EVAL_PERIOD = {max(steps // 2, 1)}",
        f"CHECKPOINT_PERIOD = {steps}",
        "train.eval_splits = ('validation', 'test')",
        # Operand dtype of the products (float32 params, activations, norms, softmax and loss).
        f"T5Config.matmul_dtype = {matmul_dtype!r}",
    ), method_bindings=(
        # Standard fine-tuning's targets are labels alone (at most 29 tokens): 64-token target
        # rows hold a packed row's labels, and its decoder computes half the padding.
        ("standard_gt", "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 64}"),
    ))
    points = [sweep.GridPoint("svamp", method, "tiny", 1.0, 0) for method in METHODS]
    enable_compilation_cache(os.path.join(out_dir, ".jax_cache"))
    start = time.time()
    outcome = sweep.run_sweep(points, out_dir, models={"tiny": spec}, steps=steps, data_dir=data_dir, run_fn=run_fn)
    if outcome.failed:
        raise UserError(f"quickstart run(s) {', '.join(outcome.failed)} failed; see {out_dir}/runs/<run>/error.txt")
    table = results_table(outcome.rows, outcome.results_csv)
    text = (f"# distill quickstart: SVAMP, T5 v1.1 tiny from scratch, {steps} steps, {matmul_dtype} products"
            f"\n\n{table}\n\n"
            f"Test split: 200 examples; accuracy = equation value match, at the step with the best validation "
            f"accuracy (validation: 10% of train, never test). Total wall time "
            f"{time.time() - start:.0f} s.\n\n{HONESTY_NOTE}\n")
    write_atomically(os.path.join(out_dir, "results.md"), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help="folder holding svamp/ (default: $DISTILL_DATA_DIR, else download to the user cache)")
    parser.add_argument("--out", default="runs/quickstart", help="output folder (runs/, vocab/, results.md)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per method")
    parser.add_argument("--matmul-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="operand dtype of the products (float32 sums, params and loss either way); auto: "
                             "bfloat16 on accelerators and on CPUs with avx512_bf16 or AMX, else float32")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise UserError(f"--steps {args.steps}: must be at least 1")
    logging.getLogger("absl").setLevel(logging.WARNING)
    limit_malloc_arenas()  # it trains in this process, as `distill train` does (distill/heap.py)
    text = run_quickstart(data_dir=args.data_dir, out_dir=args.out, steps=args.steps,
                          matmul_dtype=choose_matmul_dtype(args.matmul_dtype))
    print()
    print(text)
    print(f"written to {os.path.join(os.path.abspath(args.out), 'results.md')}")
    return 0


if __name__ == "__main__":
    from distill import cli  # One-line `error: ...` for a UserError, as under `distill`.

    sys.exit(cli.main(["quickstart", *sys.argv[1:]], process_entry=True))
