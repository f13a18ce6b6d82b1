"""scripts/bench_accelerator.py runs end to end on CPU (micro model) without TensorFlow or seqio."""
from __future__ import annotations

import subprocess
import sys

import runs_helpers as h

SCRIPT = str(h.REPO_ROOT / "scripts" / "bench_accelerator.py")


def test_the_table_has_train_and_decode_figures_and_no_tensorflow_was_imported():
    args = ["--models", "micro", "--steps", "2", "--batch-size", "2", "--decode-batch", "2", "--peak-flops", "1e12"]
    done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600,
                          env=h.subprocess_env(h.REPO_ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning" not in done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| micro |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    examples, tflops, mfu, _, decode_rows, decode_tokens, _ = cells[1:]
    assert float(examples) > 0 and float(decode_rows) > 0 and mfu.endswith("%") and 0 < float(mfu[:-1]) < 100
    assert float(decode_tokens.replace(",", "")) > float(decode_rows)
