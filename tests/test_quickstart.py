"""`distill quickstart`: data-dir resolution, the offline message, the table and results.md.

Training is injected (a fake that writes metrics.json) so these tests are
instant; the real run is what the README's main command does, and
tests/test_sweep.py trains real runs through the same sweep machinery.
"""
import json
import os
import socket

import pytest

from distill import cli, cpu, quickstart
from distill.data import download
from distill.errors import UserError


def _closed_port_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/datasets.zip"


def test_without_data_or_network_is_one_line_naming_the_env_var(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "DATASETS_URL", _closed_port_url())
    assert cli.main(["quickstart", "--out", str(tmp_path / "out"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no SVAMP data: set DISTILL_DATA_DIR=") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_data_dir_without_svamp_is_refused(tmp_path):
    with pytest.raises(UserError, match="has no svamp/svamp_train.json"):
        quickstart.find_data_dir(str(tmp_path))


def test_runs_both_methods_with_one_shared_vocabulary_and_writes_the_table(tmp_path, shared_data_dir):
    calls = []

    def fake_train(gin_files, bindings):
        values = dict(b.split(" = ", 1) for b in bindings)
        model_dir = eval(values["MODEL_DIR"])
        calls.append((gin_files, values))
        os.makedirs(model_dir)
        accuracy = 0.105 if "step_by_step" in gin_files[0] else 0.12
        with open(os.path.join(model_dir, "metrics.json"), "w") as handle:
            json.dump({"finished": True, "step": int(values["TRAIN_STEPS"]), "test_accuracy": accuracy,
                       "train_seconds": 61.2, "tokens_per_second": 12345.6}, handle)

    text = quickstart.run_quickstart(data_dir=str(shared_data_dir), out_dir=str(tmp_path), steps=5,
                                     matmul_dtype="bfloat16", run_fn=fake_train)
    assert [c[0] for c in calls] == [["experiments/svamp/standard_gt_tiny.gin"],
                                     ["experiments/svamp/step_by_step_gt_tiny.gin"]]
    vocab = str(tmp_path / "vocab" / "spiece.model")
    assert all(eval(values["VOCABULARY_PATH"]) == vocab for _, values in calls) and os.path.getsize(vocab) > 0
    assert all(values["TRAIN_STEPS"] == "5" and values["TRAIN_FRACTION"] == "1.0" for _, values in calls)
    assert all(values["T5Config.matmul_dtype"] == "'bfloat16'" for _, values in calls)
    # Standard fine-tuning's targets are labels alone: its target rows are half as long.
    assert [values["TASK_FEATURE_LENGTHS"] for _, values in calls] == [
        "{'inputs': 128, 'targets': 64}", "{'inputs': 128, 'targets': 128}"]
    assert text.startswith("# distill quickstart: SVAMP, T5 v1.1 tiny from scratch, 5 steps, bfloat16 products")
    assert "| Standard fine-tuning | 0.120 | 61 | 12,346 |" in text
    assert "| Step-by-step (gold labels) | 0.105 | 61 | 12,346 |" in text
    assert "not guaranteed" in text
    assert (tmp_path / "results.md").read_text() == text


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
    ("fpu sse2 avx2 avx512f amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
    ("fpu sse2 avx2 fma", False),  # AVX2 only: bfloat16 products are emulated
])
def test_auto_matmul_dtype_is_bfloat16_only_where_the_cpu_multiplies_it(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu.native_bfloat16(str(cpuinfo)) is native
    assert quickstart.choose_matmul_dtype("auto", str(cpuinfo)) == ("bfloat16" if native else "float32")
    assert quickstart.choose_matmul_dtype("float32", str(cpuinfo)) == "float32"
    assert cpu.native_bfloat16(str(tmp_path / "missing")) is False
    note = cpu.emulated_bfloat16_note("bfloat16", "cpu", str(cpuinfo))
    assert (note is None) is native
    if note:
        assert note.startswith("note: bfloat16 products") and str(cpuinfo) in note and "--matmul-dtype float32" in note
    assert cpu.emulated_bfloat16_note("float32", "cpu", str(cpuinfo)) is None
    assert cpu.emulated_bfloat16_note("bfloat16", "gpu", str(cpuinfo)) is None


def test_no_bfloat16_note_where_the_cpu_is_unknown_or_not_x86(tmp_path):
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu.emulated_bfloat16_note("bfloat16", "cpu", str(arm)) is None
    assert cpu.emulated_bfloat16_note("bfloat16", "cpu", str(tmp_path / "missing")) is None
