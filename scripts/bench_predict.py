"""`distill predict` end to end on a file of inputs, next to the same job done with Hugging Face generate.

    python scripts/bench_predict.py --checkpoint "$REF/code/models/tiny-t5" [--lines 1000] [--threads 2]

The inputs are the first --lines SVAMP questions (train, then test) under $DISTILL_DATA_DIR, written
as the JSONL file `distill predict --input-file` reads. Each side is its own process, pinned to the
same --threads CPUs, and is timed from its start to its exit, so start-up, model load, tokenization,
compilation (distill) and decoding all count, as they do for a user. The Hugging Face side does what
`distill predict` does: the model's label prefix (config.json's `task_specific_params`, else
"[label] "), inputs cut to --max-input-length tokens with EOS,
sorted by length and decoded greedily in batches of --batch-size with
`T5ForConditionalGeneration.generate`, up to --max-decode-length new tokens, then written as JSONL.
The two sides alternate, --repeats times each; medians are printed as lines/s with their ratio, peak
RSS, and how many of the predictions are identical (they should all be: the same weights, greedy).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hf_predict(args: argparse.Namespace) -> None:
    """The Hugging Face side, run as its own process."""
    import torch
    from transformers import T5ForConditionalGeneration, T5Tokenizer

    from distill.task_prefixes import task_prefixes_from_hf

    torch.set_num_threads(args.threads)
    tokenizer = T5Tokenizer.from_pretrained(args.checkpoint, legacy=True)
    model = T5ForConditionalGeneration.from_pretrained(args.checkpoint).eval()
    with open(args.input_file) as handle:
        records = [json.loads(line) for line in handle]
    with open(os.path.join(args.checkpoint, "config.json"), encoding="utf-8") as handle:  # as distill predict reads it
        prefix = task_prefixes_from_hf(json.load(handle), args.checkpoint)["label"]
    encoded = [tokenizer(prefix + r["input"], truncation=True, max_length=args.max_input_length).input_ids
               for r in records]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    predictions: list[str] = [""] * len(records)
    with torch.inference_mode():
        for start in range(0, len(order), args.batch_size):
            rows = order[start : start + args.batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            out = model.generate(**batch, do_sample=False, num_beams=1, max_new_tokens=args.max_decode_length)
            for i, text in zip(rows, tokenizer.batch_decode(out, skip_special_tokens=True)):
                predictions[i] = text
    with open(args.output_file, "w") as handle:
        for record, prediction in zip(records, predictions):
            handle.write(json.dumps({**record, "prediction": prediction}) + "\n")


def _run(command: list[str], cpus: set[int]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of `command` pinned to `cpus`; raises when it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"error: {' '.join(command[:4])} ... failed:\n{stderr.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss / 1e6  # kilobytes on Linux


def _inputs(data_dir: str, lines: int) -> list[dict]:
    from distill.data.readers import read_split

    examples = []
    for split in ("train", "test"):
        examples += read_split("svamp", data_dir, split)[0]
    if len(examples) < lines:
        raise SystemExit(f"error: --lines {lines}: SVAMP under {data_dir} has only {len(examples)} examples")
    return [{"input": e["input"]} for e in examples[:lines]]


def _predictions(path: str) -> list[str]:
    with open(path) as handle:
        return [json.loads(line)["prediction"] for line in handle]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a Hugging Face T5 folder with spiece.model")
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-input-length", type=int, default=256)
    parser.add_argument("--max-decode-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="CPUs both sides are pinned to")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="distill predict's --matmul-dtype (Hugging Face runs float32 either way)")
    parser.add_argument("--backend", choices=("hf",), help=argparse.SUPPRESS)
    parser.add_argument("--input-file", help=argparse.SUPPRESS)
    parser.add_argument("--output-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend == "hf":
        _hf_predict(args)
        return
    data_dir = os.environ.get("DISTILL_DATA_DIR")
    if not data_dir:
        raise SystemExit("error: set DISTILL_DATA_DIR to the folder holding svamp/ (see README, Datasets)")
    cpus = set(sorted(os.sched_getaffinity(0))[: args.threads])
    sizes = ["--batch-size", str(args.batch_size), "--max-input-length", str(args.max_input_length),
             "--max-decode-length", str(args.max_decode_length)]
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as scratch:
        inputs = os.path.join(scratch, "inputs.jsonl")
        with open(inputs, "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in _inputs(data_dir, args.lines))
        outputs = {name: os.path.join(scratch, f"{name}.jsonl") for name in ("distill", "hf")}
        commands = {
            "distill": [sys.executable, "-m", "distill.cli", "predict", "--checkpoint", args.checkpoint,
                        "--input-file", inputs, "--output-file", outputs["distill"], *sizes,
                        "--matmul-dtype", args.matmul_dtype],
            "hf": [sys.executable, os.path.abspath(__file__), "--backend", "hf", "--checkpoint", args.checkpoint,
                   "--input-file", inputs, "--output-file", outputs["hf"], "--threads", str(args.threads), *sizes],
        }
        print(f"{args.lines} lines, batch {args.batch_size}, greedy, up to {args.max_decode_length} new tokens, "
              f"distill matmuls in {args.matmul_dtype}, "
              f"CPUs {sorted(cpus)}, load average {os.getloadavg()[0]:.2f}")
        walls: dict[str, list[float]] = {name: [] for name in commands}
        peaks: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, command in commands.items():
                wall, peak = _run(command, cpus)
                walls[name].append(wall)
                peaks[name] = max(peaks.get(name, 0.0), peak)
        rates = {name: args.lines / statistics.median(w) for name, w in walls.items()}
        for name in commands:
            print(f"{name:>8}: {rates[name]:7.1f} lines/s  (median wall {statistics.median(walls[name]):.1f} s of "
                  f"{', '.join(f'{w:.1f}' for w in walls[name])})  peak RSS {peaks[name]:.2f} GB")
        written = {name: _predictions(path) for name, path in outputs.items()}
        for name, predictions in written.items():
            if len(predictions) != args.lines:
                raise SystemExit(f"error: {name} wrote {len(predictions)} predictions for {args.lines} lines")
        same = sum(a == b for a, b in zip(written["distill"], written["hf"]))
        print(f"distill / hf: x{rates['distill'] / rates['hf']:.2f} end to end; "
              f"identical predictions: {same} of {args.lines}")


if __name__ == "__main__":
    main()
