"""Upstream `python -m t5x.train` with gin_configs/t5x/svamp.gin: the paper's loss logged, resume, export.

T5X's tiny T5 from scratch on svamp_step_by_step_gt (the paper's SVAMP
data, DISTILL_DATA_DIR) with 2 microbatches: 4 steps, a checkpoint, a
resumed run to step 6, then `distill export` of the model dir, whose Hugging
Face logits must match our Flax T5 and T5X's own network on the checkpoint.
Needs T5X (DISTILL_T5X_SRC, tests/t5x_helpers.py).
"""
import subprocess
import sys

import numpy as np

import t5x_helpers


def _t5x_train(model_dir, vocab, *, steps: int) -> str:
    from distill.gin_paths import gin_configs_dir

    args = [
        "--gin_search_paths=%s,%s" % (gin_configs_dir(), t5x_helpers.t5x_paths()[0]),
        "--gin_file=t5x/examples/t5/t5_1_1/tiny.gin", "--gin_file=t5x/svamp.gin",
        f"--gin.MODEL_DIR='{model_dir}'", "--gin.INITIAL_CHECKPOINT_PATH=None",
        "--gin.utils.CheckpointConfig.restore=None", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
        "--gin.NUM_MICROBATCHES=2", "--gin.EVAL_PERIOD=2", "--gin.utils.SaveCheckpointConfig.period=2",
        f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{vocab}'",
        "--gin.network.T5Config.vocab_size=256", "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 128}",
        "--gin.RANDOM_SEED=0", "--gin.train/utils.DatasetConfig.seed=0",  # T5X reseeds data each run by default
        "--gin.train.train_eval_dataset_cfg=None", "--gin.train.infer_eval_dataset_cfg=None",  # time
    ]
    env = t5x_helpers.subprocess_env(DISTILL_VOCABULARY=vocab, XLA_FLAGS=(
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"))
    result = subprocess.run([sys.executable, "-m", "t5x.train", *args], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def _train_scalars(model_dir) -> dict[int, dict[str, float]]:
    """{step: {tag: value}} from T5X's TensorBoard events in MODEL_DIR/train."""
    import tensorflow as tf

    scalars: dict[int, dict[str, float]] = {}
    for file in sorted((model_dir / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                if value.HasField("tensor") and value.tensor.dtype == tf.float32.as_datatype_enum:
                    scalars.setdefault(event.step, {})[value.tag] = float(tf.make_ndarray(value.tensor))
                elif value.HasField("simple_value"):
                    scalars.setdefault(event.step, {})[value.tag] = value.simple_value
    return scalars


def test_t5x_train_logs_task_losses_resumes_and_exports(tmp_path, shared_data_dir):
    t5x_helpers.require_t5x()
    import orbax.checkpoint as ocp

    from distill.models.export import export
    from distill.run_dir import load_trained
    from distill.vocab import train_vocabulary_for_dataset

    vocab = train_vocabulary_for_dataset("svamp", str(shared_data_dir), size=256,
                                         out_path=str(tmp_path / "spm.model"))
    model_dir = tmp_path / "run"
    _t5x_train(model_dir, vocab, steps=4)
    assert (model_dir / "checkpoint_4").is_dir()
    first = _train_scalars(model_dir)[4]
    for tag in ("label_loss", "rationale_loss", "label_tokens", "rationale_tokens", "loss"):
        assert np.isfinite(first[tag]) and first[tag] > 0, (tag, first)
    assert first["rationale_tokens"] > 2 * first["label_tokens"]  # rationales are longer: the point of per-task means
    print(f"step 4: label_loss={first['label_loss']:.4f} rationale_loss={first['rationale_loss']:.4f}")

    log = _t5x_train(model_dir, vocab, steps=6)
    assert f"Restoring checkpoint from {model_dir}/checkpoint_4" in log
    assert (model_dir / "checkpoint_6").is_dir()
    assert np.isfinite(_train_scalars(model_dir)[6]["label_loss"])

    out = export(str(model_dir), str(tmp_path / "hf"))
    trained = load_trained(str(model_dir))
    assert trained.step == 6 and trained.tokenizer_path == vocab
    encoder, decoder, target = t5x_helpers.token_rows(vocab=256)
    ours = t5x_helpers.flax_logits(trained.config, trained.params, encoder, decoder)
    np.testing.assert_allclose(t5x_helpers.hf_logits(out, encoder, decoder), ours, rtol=1e-4, atol=1e-4)
    raw = ocp.PyTreeCheckpointer().restore(str(model_dir / "checkpoint_6" / "state"))["target"]
    network = t5x_helpers.tiny_network(vocab_size=256, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16)
    np.testing.assert_allclose(t5x_helpers.t5x_logits(network, raw, encoder, decoder, target), ours,
                               rtol=1e-5, atol=1e-5)
