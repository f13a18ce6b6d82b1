"""scripts/bench_serve.py runs end to end (two real servers and offline decoding, small settings)."""
from __future__ import annotations

import re
import subprocess
import sys

import runs_helpers as h

SCRIPT = str(h.REPO_ROOT / "scripts" / "bench_serve.py")


def test_the_table_and_the_summary_agree():
    args = ["--requests", "6", "--concurrency", "1,3", "--max-batch-size", "2", "--max-new-tokens", "4"]
    done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600,
                          env=h.subprocess_env(h.REPO_ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    rates = {}
    for line in done.stdout.splitlines():
        row = re.match(r"(serve --max-batch-size \d+|decode_texts \(offline\))\s+(\S+)\s+([\d.]+)", line)
        if row:
            rates[row.group(1), row.group(2)] = float(row.group(3))
    assert set(rates) == {*((f"serve --max-batch-size {b}", c) for b in "21" for c in "13"),
                          ("decode_texts (offline)", "-")}
    summary = re.search(r"at concurrency 3: batched ([\d.]+) req/s = ([\d.]+)x unbatched "
                        r"\(the bound, offline / unbatched: ([\d.]+)x\) and (\d+)% of offline", done.stdout)
    assert summary, done.stdout
    batched, unbatched, offline = (rates["serve --max-batch-size 2", "3"], rates["serve --max-batch-size 1", "3"],
                                   rates["decode_texts (offline)", "-"])
    assert float(summary.group(1)) == batched
    assert abs(float(summary.group(2)) - batched / unbatched) <= 0.051
    assert abs(float(summary.group(3)) - offline / unbatched) <= 0.051
    assert abs(int(summary.group(4)) - 100 * batched / offline) <= 0.51


def test_a_refused_request_is_one_error_line():
    done = subprocess.run([sys.executable, SCRIPT, "--requests", "2", "--concurrency", "1", "--max-batch-size", "2",
                           "--max-input-tokens", "16", "--max-new-tokens", "2"], capture_output=True, text=True,
                          timeout=600, env=h.subprocess_env(h.REPO_ROOT))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: HTTP 400 from the server")
    assert "Traceback" not in done.stderr
