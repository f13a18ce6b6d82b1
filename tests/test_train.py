"""Training runs on the real SVAMP data with a micro T5: outputs, preemption, resume, sharding, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import runs_helpers as h
from distill.errors import UserError
from distill.optimizers import make_optimizer


def _train_kwargs(shared_data_dir, model_dir, **overrides):
    kwargs = dict(model_dir=str(model_dir), dataset="svamp", mixture_or_task_name="svamp_step_by_step_gt",
                  task_feature_lengths={"inputs": 128, "targets": 64}, train_steps=4, batch_size=4,
                  model_config=h.micro_config(dropout_rate=0.0), optimizer=make_optimizer("adamw", 1e-3), data_dir=str(shared_data_dir),
                  train_fraction=0.125, checkpoint_period=2, log_period=2, eval_max_examples=4,
                  max_decode_length=4, num_rationale_examples=2, async_checkpointing=False)
    kwargs.update(overrides)
    return kwargs


def _send_sigterm_after_checkpoint(model_dir, step: int) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (h.latest_step(model_dir) or 0) >= step:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_sigterm_saves_then_resume_writes_every_output(shared_data_dir, tmp_path, monkeypatch):
    from distill import train_feed
    from distill.train import train

    model_dir = tmp_path / "run"
    # 1. A long run stopped by SIGTERM (preemption) right after its first checkpoint; its feed is
    #    written in windows (the first 64 batches before training), not all 100,000 batches first.
    monkeypatch.setattr(train_feed, "AHEAD_BATCHES", 64)
    watcher = _send_sigterm_after_checkpoint(model_dir, 2)
    stopped = train(**_train_kwargs(shared_data_dir, model_dir, train_steps=100_000))
    watcher.join()
    assert stopped["preempted"] and stopped["step"] >= 2
    assert h.latest_step(model_dir) == stopped["step"]  # saved where it stopped
    assert not (model_dir / "metrics.json").exists()  # no final evaluation of a preempted run
    assert (model_dir / "vocab" / "spm.model").is_file()  # trained once from the data

    # 2. Relaunch with a shorter total: resumes at the saved step, finishes, evaluates.
    final_step = stopped["step"] + 2
    vocab_bytes = (model_dir / "vocab" / "spm.model").read_bytes()
    done = train(**_train_kwargs(shared_data_dir, model_dir, train_steps=final_step),
                 config_text="TRAIN_STEPS = 6\n")
    assert not done["preempted"] and done["step"] == final_step
    assert (model_dir / "vocab" / "spm.model").read_bytes() == vocab_bytes  # reused, not retrained
    assert h.latest_step(model_dir) == final_step
    assert (model_dir / "config.gin").read_text() == "TRAIN_STEPS = 6\n"

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["latest_step"] == final_step and metrics["task"] == "svamp_label_gt"
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and "validation_accuracy" in metrics
    assert metrics["evals"][str(final_step)]["test"]["num_examples"] == 4
    for split in ("validation", "test"):
        records = [json.loads(line) for line in
                   (model_dir / "predictions" / f"{split}_step{final_step}.jsonl").read_text().splitlines()]
        assert len(records) == 4 and set(records[0]) == {"input", "target", "prediction", "correct"}
        accuracy = metrics["evals"][str(final_step)][split]["accuracy"]
        assert sum(r["correct"] for r in records) / 4 == pytest.approx(accuracy)  # per-example = the metric
        assert records[0]["input"].startswith("[label] ")
    rationales = (model_dir / "predictions" / f"rationales_step{final_step}.jsonl").read_text().splitlines()
    assert len(rationales) == 2 and json.loads(rationales[0])["input"].startswith("[rationale] ")
    run_info = json.loads((model_dir / "run.json").read_text())
    assert run_info["label_task"] == "svamp_label_gt" and run_info["model_config"]["d_model"] == 32
    assert run_info["task_prefixes"] == {"label": "[label] ", "rationale": "[rationale] "}

    import tensorflow as tf

    tags = set()
    for event_file in (model_dir / "events").glob("*tfevents*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {value.tag for value in event.summary.value}
    assert {"train/loss", "train/label_loss", "train/rationale_loss", "train/grad_norm", "perf/steps_per_sec",
            "perf/tokens_per_sec", "test/accuracy", "validation/accuracy"} <= tags


def test_kill_resume_and_sharding_match_uninterrupted(shared_data_dir, tmp_path):
    """Through `python -m distill.train`: kill -9 + relaunch, and 4 devices with NUM_PARTITIONS=2."""
    vocab = h.train_vocabulary(shared_data_dir, tmp_path)
    env = h.subprocess_env(shared_data_dir, cache_dir=tmp_path / "jax_cache")
    steps = ["--gin.CHECKPOINT_PERIOD=2", "--gin.train.eval_splits=()"]  # dropout on, no evaluation

    baseline = tmp_path / "baseline"  # relative MODEL_DIR, launched outside the repo
    result = h.run(h.train_command(baseline.relative_to(tmp_path), vocab, 6, *steps), env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 6

    killed = tmp_path / "killed"
    process = subprocess.Popen(h.train_command(killed, vocab, 6, *steps), cwd=h.REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while (h.latest_step(killed) or 0) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = h.latest_step(killed)
    assert killed_at is not None
    result = h.run(h.train_command(killed, vocab, 6, *steps), env)
    assert result.returncode == 0, result.stderr[-2000:]
    if killed_at < 6:
        assert f"resuming {killed} from step {killed_at}" in result.stdout

    expected = h.final_params(baseline)
    resumed = h.final_params(killed)
    for name, value in expected.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)

    # 4 fake devices, mesh (data 2, model 2); first the two bad meshes, in the same process.
    sharded = tmp_path / "sharded"
    runs = [h.train_command(sharded, vocab, 6, *steps, "--gin.NUM_PARTITIONS=2", "--gin.BATCH_SIZE=3")[3:],
            h.train_command(sharded, vocab, 6, *steps, "--gin.NUM_PARTITIONS=3")[3:],
            h.train_command(sharded, vocab, 6, *steps, "--gin.NUM_PARTITIONS=2")[3:]]
    driver = ("import json, sys\nfrom distill.train import main\n"
              "for argv in json.loads(sys.argv[1]):\n    print('EXIT', main(argv), flush=True)\n")
    result = h.run([sys.executable, "-c", driver, json.dumps(runs)],
                   h.subprocess_env(shared_data_dir, devices=4, cache_dir=tmp_path / "jax_cache"))
    exits = [line for line in result.stdout.splitlines() if line.startswith("EXIT")]
    assert exits == ["EXIT 2", "EXIT 2", "EXIT 0"], result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "batch size 3 is not divisible by the data-parallel size 2" in errors[0]
    assert "num_partitions=3 does not divide the 4 devices" in errors[1]
    assert not (sharded / "checkpoints").exists() or h.latest_step(sharded) == 6
    sharded_params = h.final_params(sharded)
    for name, value in expected.items():
        np.testing.assert_allclose(sharded_params[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("overrides, message", [
    ({"mixture_or_task_name": "svamp_step_by_step"}, "unknown task or mixture 'svamp_step_by_step'"),
    ({"dataset": "gsm8k"}, "gsm8k"),
    ({"data_dir": "{tmp}/no_data"}, "does not exist"),
    ({"data_dir": "{tmp}"}, "no svamp data in"),
    ({"vocabulary_path": "{tmp}/missing.model"}, "missing.model"),
    ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
    ({"task_feature_lengths": {"inputs": 128}}, "TASK_FEATURE_LENGTHS"),
    ({"pack": True, "pack_batch": True}, "PACK_BATCH=True re-packs each batch of unpacked rows"),
    ({"label_prefix": 7}, "LABEL_PREFIX=7 must be a string"),
    ({"rationale_prefix": "x" * 101}, "RATIONALE_PREFIX='xxxx"),
    ({"label_prefix": "q: ", "rationale_prefix": "q: "}, "the student could not tell the tasks apart"),
])
def test_bad_input_is_one_line_before_compiling(shared_data_dir, tmp_path, overrides, message):
    from distill.train import train

    overrides = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(UserError) as info:
        train(**_train_kwargs(shared_data_dir, tmp_path / "run", **overrides))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoints_of_another_shape_are_refused(shared_data_dir, tmp_path):
    from distill.train import train

    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "run.json").write_text(json.dumps({"model_config": {**h.MICRO_MODEL, "d_model": 64}}))
    with pytest.raises(UserError, match="holds a run with d_model=64 but this config has d_model=32"):
        train(**_train_kwargs(shared_data_dir, model_dir))
    (model_dir / "run.json").write_text(json.dumps({"model_config": h.MICRO_MODEL,
                                                    "task_prefixes": {"label": "", "rationale": "explain: "}}))
    with pytest.raises(UserError, match="holds a run trained with task prefixes .*'label': ''.* set LABEL_PREFIX"):
        train(**_train_kwargs(shared_data_dir, model_dir))
    assert not (model_dir / "checkpoints").exists()

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({
        "model_type": "t5", "vocab_size": 512, "d_model": 32, "d_kv": 8, "d_ff": 128, "num_heads": 2,
        "num_layers": 1, "num_decoder_layers": 1, "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False, "relative_attention_num_buckets": 32}))
    with pytest.raises(UserError, match="INITIAL_CHECKPOINT_PATH .* has d_ff=128 but this config has d_ff=64"):
        train(**_train_kwargs(shared_data_dir, tmp_path / "fresh", initial_checkpoint_path=str(hf_dir)))


def test_entry_point_prints_one_error_line(shared_data_dir, tmp_path, capsys, monkeypatch):
    from distill.train import main

    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data_dir))
    base = [f"--gin_file={h.TINY_GIN}", f"--gin.MODEL_DIR='{tmp_path / 'run'}'"]
    cases = [
        (base + ["--gin.BATCH_SIZE='eight'"], "batch_size='eight' must be a positive integer"),
        (base + ["--gin.T5Config.d_modle=3"], "doesn't have a parameter named 'd_modle'"),
        ([f"--gin_file={h.TINY_GIN}"], "required gin macro(s) not set: MODEL_DIR"),
        (base + ["--gin.MIXTURE_OR_TASK_NAME='cqa_label_gt'"], "unknown task or mixture 'cqa_label_gt'"),
        (["--gin_file=experiments/svamp/nope.gin"], "not found"),
        (base + ["--bogus_flag"], "bogus_flag"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
    assert not (tmp_path / "run").exists()


def test_pack_batch_trains_on_packed_rows_of_the_same_batches(shared_data_dir, tmp_path):
    """PACK_BATCH=True through train(): packed rows of the unpacked batches; resuming without it is refused."""
    from distill.input_pipeline import TrainData, TrainDataSpec
    from distill.tasks import register_tasks
    from distill.train import train
    from tasks_helpers import isolated_registry

    model_dir = tmp_path / "run"
    kwargs = _train_kwargs(shared_data_dir, model_dir, pack=False, pack_batch=True, train_steps=2, eval_splits=())
    train(**kwargs)
    assert h.latest_step(model_dir) == 2
    with pytest.raises(UserError, match="pack_batch=True but this run has False"):
        train(**{**kwargs, "pack_batch": False, "train_steps": 4})
    spec = dict(mixture_or_task_name="svamp_step_by_step_gt", task_feature_lengths=(("inputs", 128), ("targets", 64)),
                batch_size=4, pack=False, seed=0)
    with isolated_registry():  # the process feed (the default) registers the tasks in its child only
        register_tasks(dataset="svamp", data_dir=str(shared_data_dir), vocabulary=str(model_dir / "vocab" / "spm.model"),
                       train_fraction=0.125)
        unpacked, packed = next(TrainData(TrainDataSpec(**spec))), next(TrainData(TrainDataSpec(**spec, pack_batch=True)))
    assert "encoder_segment_ids" in packed and packed["encoder_input_tokens"].shape[0] <= 4
    assert np.count_nonzero(packed["decoder_loss_weights"]) == np.count_nonzero(unpacked["decoder_loss_weights"])
    assert sorted(packed["encoder_input_tokens"][packed["encoder_input_tokens"] > 0].tolist()) == sorted(
        unpacked["encoder_input_tokens"][unpacked["encoder_input_tokens"] > 0].tolist())
