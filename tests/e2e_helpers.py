"""Helpers shared by the end-to-end tests (quickstart, sweep, report, notebook, download, launcher)."""
from __future__ import annotations

import csv
import json
import pathlib
import sys

from distill.report import RESULT_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_results_csv(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    """Writes rows (dicts keyed by RESULT_COLUMNS) as a sweep's results.csv."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def png_series(path: pathlib.Path) -> dict[str, list[str]]:
    """Checks path is a decodable non-empty PNG; returns {subplot title: [series labels]} it records."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as image:
        image.load()
        assert image.width > 100 and image.height > 100
        return json.loads(image.text["Description"])


def markdown_rows(text: str, section: str) -> list[list[str]]:
    """The rows (cells stripped, header row first) of the first table under `## section`."""
    lines = text.splitlines()
    start = lines.index(f"## {section}")
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# A micro T5 (one layer each side, d_model 32) and a short, small evaluation: seconds per run.
MICRO_BINDINGS = (
    "VOCAB_SIZE = 512", "T5Config.d_model = 32", "T5Config.d_kv = 8", "T5Config.d_ff = 64",
    "T5Config.num_heads = 2", "T5Config.num_encoder_layers = 1", "T5Config.num_decoder_layers = 1",
    "TASK_FEATURE_LENGTHS = {'inputs': 128, 'targets': 64}", "BATCH_SIZE = 4", "EVAL_PERIOD = 0",
    "CHECKPOINT_PERIOD = 0", "train.eval_splits = ('test',)", "train.eval_max_examples = 8",
    "train.max_decode_length = 8", "train.num_rationale_examples = 0", "train.async_checkpointing = False",
)


def run_micro_sweep(sweep_dir: str, data_dir: str) -> None:
    """The 2 methods x 1 fraction x 2 seeds SVAMP grid with a micro T5 for 2 steps, as `distill sweep` runs it."""
    import os

    from distill import sweep
    from distill.compilation_cache import enable_compilation_cache
    from distill.vocab import train_vocabulary_for_dataset

    enable_compilation_cache(os.path.join(sweep_dir, ".jax_cache"))
    vocab = train_vocabulary_for_dataset("svamp", data_dir, size=512, out_path=os.path.join(sweep_dir, "spm.model"))
    micro = sweep.ModelSpec("micro", tiny=True, bindings=(*MICRO_BINDINGS, f"VOCABULARY_PATH = {vocab!r}"))
    grid = sweep.make_grid(["svamp"], ["standard_gt", "step_by_step_gt"], ["micro"], [0.125], [0, 1])
    outcome = sweep.run_sweep(grid, sweep_dir, models={"micro": micro}, steps=2, data_dir=data_dir)
    assert not outcome.failed, outcome.failed
    # The feed child ran the seqio pipeline; the records' tokens/s came from train() itself.
    assert "tensorflow" not in sys.modules
