"""The benchmarks' synthetic mode (no TensorFlow), FLOP counts and ceilings, the paper run they compare with,
the progress line."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest

import runs_helpers as h
from distill import flops
from distill.metric_writer import MetricWriter, progress_line


def test_synthetic_benchmark_runs_without_tensorflow(tmp_path):
    code = ("import runpy, sys\n"
            "sys.argv = ['bench_train.py', '--synthetic', '--model', 'micro', '--batch-size', '2',"
            " '--steps', '2', '--warmup', '1', '--peak-flops', '1e12']\n"
            "try:\n    runpy.run_path('scripts/bench_train.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('TF_IMPORTED', any(m.startswith(('tensorflow', 'seqio')) for m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=h.REPO_ROOT, capture_output=True, text=True,
                            env={**h.subprocess_env(tmp_path)}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("bench ["))
    assert "synthetic step_by_step, model micro" in line and "lengths 512/128" in line and "examples/s" in line
    assert "non-padding tokens/s" in line and "peak RSS" in line and "MFU " in line and "GFLOP/s useful" in line
    assert "TF_IMPORTED False" in result.stdout


def test_synthetic_batches_are_packed_step_by_step_rows():
    sys.path.insert(0, str(h.REPO_ROOT / "scripts"))
    import bench_train

    batch = next(bench_train.synthetic_batches(batch_size=4, input_length=512, target_length=128, vocab_size=100,
                                               method="step_by_step"))
    weights, tasks, segments = batch["decoder_loss_weights"], batch["decoder_task_ids"], batch["decoder_segment_ids"]
    assert set(np.unique(tasks[weights == 1])) == {0, 1}  # both tasks present
    assert (segments.max(axis=1) >= 2).all()  # several examples per row
    assert ((batch["encoder_input_tokens"] != 0) == (batch["encoder_segment_ids"] != 0)).all()
    for row in range(4):  # decoder inputs are the targets shifted right within each segment
        for seg in range(1, segments[row].max() + 1):
            idx = np.flatnonzero(segments[row] == seg)
            assert batch["decoder_input_tokens"][row, idx[0]] == 0
            np.testing.assert_array_equal(batch["decoder_input_tokens"][row, idx[1:]],
                                          batch["decoder_target_tokens"][row, idx[:-1]])
    labels_only = next(bench_train.synthetic_batches(batch_size=2, input_length=512, target_length=128,
                                                     vocab_size=100, method="standard"))
    assert not labels_only["decoder_task_ids"].any()


def test_param_counts_match_the_model():
    import flax.linen as nn
    import jax

    from distill.models.t5 import abstract_params

    for gated in (True, False):
        config = h.micro_config(feed_forward_proj="gated-gelu" if gated else "relu")
        leaves = jax.tree_util.tree_leaves_with_path(nn.unbox(abstract_params(config))["params"])
        matmul = {jax.tree_util.keystr(p): int(np.prod(l.shape)) for p, l in leaves
                  if l.ndim == 2 and "embedding" not in jax.tree_util.keystr(p)}
        counts = flops.param_counts(config)
        assert counts.encoder == sum(v for k, v in matmul.items() if k.startswith("['encoder']"))
        assert counts.decoder == sum(v for k, v in matmul.items() if k.startswith("['decoder']"))
        assert counts.lm_head == matmul["['decoder']['logits_dense']"]


def test_train_flops_formula():
    config = h.micro_config()
    counts = flops.param_counts(config)
    got = flops.train_flops(config, input_tokens=100, target_tokens=10, input_length=128, target_length=64)
    inner = config.num_heads * config.d_kv
    attention = 12 * inner * (128 * 100 + (64 + 128) * 10)  # one layer each side
    assert got == pytest.approx(6 * (counts.encoder * 100 + counts.decoder * 10) + attention)
    assert flops.mfu(got, 2.0, None) is None and flops.mfu(got, 2.0, 4 * got) == pytest.approx(0.5)


def test_decode_flops_formula():
    config = h.micro_config()
    counts = flops.param_counts(config)
    inner = config.num_heads * config.d_kv
    cross_kv = 2 * config.d_model * inner  # one decoder layer
    lengths, new = [5, 3], 4
    encoder = 2 * (counts.encoder + cross_kv) * 8 + 4 * inner * (25 + 9)
    per_token = 2 * (counts.decoder - cross_kv) + 4 * inner * (new + 1) / 2
    greedy = encoder + new * (2 * per_token + 4 * inner * 8)
    assert flops.decode_flops(config, input_lengths=lengths, new_tokens=new) == pytest.approx(greedy)
    beam = flops.decode_flops(config, input_lengths=lengths, new_tokens=new, beams=4)
    assert beam == pytest.approx(encoder + 4 * (greedy - encoder))  # the encoder runs once per row, not per beam


def _bench_train_module():
    sys.path.insert(0, str(h.REPO_ROOT / "scripts"))
    import bench_train

    return bench_train


def _paper_run_files(folder, model_type="standard", steps=30, seconds_per_step=0.5, rss_kib=1_500_000):
    """A run of the paper's code as ../shared/reference/bench.sh leaves it: <method>.json and <method>.time."""
    import json

    path = folder / f"{model_type}.json"
    path.write_text(json.dumps({"argv": ["--batch_size", "32", "--model_type", model_type], "t_start": 1e9,
                                "step_t": [1e9 + seconds_per_step * i for i in range(steps)]}))
    (folder / f"{model_type}.time").write_text(f"\tMaximum resident set size (kbytes): {rss_kib}\n")
    return path


def test_the_paper_run_is_read_as_bench_sh_reports_it(tmp_path):
    from distill.errors import UserError

    bench_train = _bench_train_module()
    run = bench_train.paper_run(str(_paper_run_files(tmp_path)), "standard")
    assert run["steps_per_sec"] == pytest.approx(2.0) and run["examples_per_sec"] == pytest.approx(64.0)
    assert run["peak_rss_gb"] == pytest.approx(1_500_000 / 2**20) and run["started"] == 1e9
    step_by_step = _paper_run_files(tmp_path, "task_prefix", seconds_per_step=2.0)
    assert bench_train.paper_run(str(step_by_step), "step_by_step")["examples_per_sec"] == pytest.approx(16.0)
    cases = {"a 'task_prefix' run; --reference standard": (str(step_by_step), "standard"),
             "cannot read": (str(tmp_path / "nope.json"), "standard")}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "standard.json").write_text("{not json")
    (broken / "standard.time").write_text("")
    cases["is not a run of the paper's code"] = (str(broken / "standard.json"), "standard")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "standard.json").write_text('{"argv": {"--model_type": "standard"}, "step_t": [], "t_start": 0}')
    (odd / "standard.time").write_text("")
    cases["is not a run of the paper's code as"] = (str(odd / "standard.json"), "standard")
    short = tmp_path / "short"
    short.mkdir()
    cases["too few timed steps"] = (str(_paper_run_files(short, steps=1)), "standard")
    no_rss = tmp_path / "no_rss"
    no_rss.mkdir()
    path = _paper_run_files(no_rss)
    (no_rss / "standard.time").write_text("Exit status: 0\n")
    cases["no peak RSS"] = (str(path), "standard")
    for message, (path, mode) in cases.items():
        with pytest.raises(UserError, match=re.escape(message)) as caught:
            bench_train.paper_run(path, mode)
        assert "bench.sh" in str(caught.value)  # names the fix


def test_against_needs_the_reference_setup(tmp_path):
    result = subprocess.run([sys.executable, "scripts/bench_train.py", "--synthetic", "--against",
                             str(_paper_run_files(tmp_path))], cwd=h.REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "--against needs --reference" in result.stderr


def test_decode_benchmark_prints_ratios_and_ceilings(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/bench_decode.py", "--size", "micro", "--batch", "2", "--input-length", "8",
         "--decode-length", "3", "--num-beams", "2", "--repeats", "1"],
        cwd=h.REPO_ROOT, capture_output=True, text=True, env=h.subprocess_env(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ratios = [line for line in result.stdout.splitlines() if " ratio  : " in line]
    assert [line.split()[0] for line in ratios] == ["greedy", "beam"]
    for line in ratios:
        ceiling = float(line.split("ceiling ")[1].split("x:")[0])
        assert ceiling > 0 and "useful GFLOP at the" in line and "float32 matmul peak" in line
    assert "peak RSS: distill" in result.stdout


def test_progress_line():
    line = progress_line(40, 60, {"loss": 3.21, "label_loss": 1.2, "rationale_loss": 4.3, "learning_rate": 1e-3},
                         {"steps_per_sec": 2.0, "tokens_per_sec": 4120.0, "mfu": 0.123}, 10.0)
    assert line == ("step 40/60 | loss 3.2100 (label 1.200, rationale 4.300) | lr 1.00e-03 | 2.00 steps/s | "
                    "4,120 tok/s | MFU 12.3% | ETA 0:00:10")


def test_mean_tokens_per_sec_leaves_out_the_compiling_interval():
    writer = MetricWriter(None, total_steps=30, stream=sys.stderr)
    assert writer.mean_tokens_per_sec() is None
    for step, tokens in ((10, 10), (20, 400), (30, 600)):  # 2 s each: 5, 200, 300 tokens/s
        writer.throughput.start, writer.throughput.steps, writer.throughput.tokens = time.perf_counter() - 2.0, 10, tokens
        writer.report_train(step, {"loss": 1.0})
    assert writer.mean_tokens_per_sec() == pytest.approx(250.0, rel=1e-2)


def test_pytorch_reference_recipe_trains_both_methods(shared_data_dir):
    """scripts/bench_train_hf.py, a PyTorch rebuild of the recipe (the real baseline: ../shared/reference)."""
    for method, sequences in (("standard", 1), ("step_by_step", 2)):
        result = subprocess.run(
            [sys.executable, "scripts/bench_train_hf.py", "--micro", "--method", method, "--batch-size", "4",
             "--steps", "2", "--warmup", "1", "--data-dir", str(shared_data_dir)],
            cwd=h.REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        line = next(line for line in result.stdout.splitlines() if line.startswith("bench-hf ["))
        assert f"[{method}, torch" in line and "batch 4:" in line and "peak RSS" in line
        tokens_per_step = int(line.split("(")[1].split("/step")[0].replace(",", ""))
        # Each example trains on `sequences` (input, target) pairs of SVAMP text: tens of tokens each.
        assert 4 * sequences * 20 < tokens_per_step < 4 * sequences * 400
        assert np.isfinite(float(line.rsplit("loss ", 1)[1]))


def test_pytorch_reference_recipe_rejects_a_missing_data_dir(tmp_path):
    result = subprocess.run([sys.executable, "scripts/bench_train_hf.py", "--data-dir", str(tmp_path / "nope")],
                            cwd=h.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: data dir")
