"""Trainer on a tiny T5 (1 device): the loss is the DESIGN formula on the model's logits,
gradient accumulation is exact, bf16 compute keeps f32 params, bf16 matmuls track f32 gradients,
bad input is a UserError.
"""
import jax
import numpy as np
import optax
import pytest

from distill.errors import UserError
from distill.optimizers import make_optimizer
from distill.partitioning import Partitioner
from distill.trainer import Trainer
from trainer_helpers import FAST_COMPILE, make_batch, numpy_step_by_step_loss, tiny_config

CONFIG = tiny_config(num_encoder_layers=1, num_decoder_layers=1)
ALPHA = 0.3


@pytest.fixture(scope="module")
def trainer():
    partitioner = Partitioner(compiler_options=FAST_COMPILE)
    return Trainer(config=CONFIG, optimizer=optax.sgd(1.0), partitioner=partitioner, alpha=ALPHA)


@pytest.fixture(scope="module")
def initial_params(trainer):
    return jax.device_get(trainer.create_state().params)


def _logits(trainer, params, batch):
    apply = jax.jit(lambda p, b: trainer.model.network.apply(
        {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"],
        encoder_segment_ids=b.get("encoder_segment_ids"),
        decoder_segment_ids=b.get("decoder_segment_ids")), compiler_options=FAST_COMPILE)
    return np.asarray(apply(params, batch))


@pytest.mark.parametrize("packed", [False, True])
def test_eval_loss_is_the_formula_on_model_logits(trainer, initial_params, packed):
    state = trainer.init_from_params(initial_params)
    batch = make_batch(11, packed=packed)
    metrics = trainer.eval_step(state, batch)
    expected = numpy_step_by_step_loss(_logits(trainer, initial_params, batch), batch, ALPHA)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    assert float(metrics["label_tokens"]) > 0 and float(metrics["rationale_tokens"]) > 0
    if not packed:  # same shapes, no recompile: a label-only batch divides nothing by zero
        label_only = trainer.eval_step(state, make_batch(12, rationale_fraction=0.0))
        assert float(label_only["rationale_tokens"]) == 0.0
        assert np.isfinite(float(label_only["loss"]))
        np.testing.assert_allclose(float(label_only["loss"]),
                                   ALPHA * float(label_only["label_loss"]), rtol=1e-6)


def test_microbatched_gradients_equal_full_batch(trainer, initial_params):
    """With SGD(lr=1), new params = old - grads: compare the updates of 1 vs 4 microbatches."""
    batch = make_batch(13, packed=True)
    full_state, full = trainer.train_step(trainer.init_from_params(initial_params), batch)
    micro = Trainer(config=CONFIG, optimizer=optax.sgd(1.0), partitioner=trainer.partitioner,
                    alpha=ALPHA, num_microbatches=4)
    micro_state, parts = micro.train_step(micro.init_from_params(initial_params), batch)
    for key in ("loss", "label_loss", "rationale_loss", "label_tokens", "rationale_tokens",
                "grad_norm"):
        np.testing.assert_allclose(float(parts[key]), float(full[key]), rtol=1e-5, err_msg=key)
    moved = 0.0
    for a, b, p0 in zip(jax.tree.leaves(full_state.params), jax.tree.leaves(micro_state.params),
                        jax.tree.leaves(initial_params), strict=True):
        grad_full, grad_micro = p0 - np.asarray(a), p0 - np.asarray(b)
        np.testing.assert_allclose(grad_micro, grad_full, rtol=0,
                                   atol=1e-5 * np.abs(grad_full).max() + 1e-9)
        moved = max(moved, float(np.abs(grad_full).max()))
    assert moved > 1e-3
    assert int(micro_state.step) == 1
    with pytest.raises(UserError, match="num_microbatches"):
        Trainer(config=CONFIG, optimizer=optax.sgd(1.0), partitioner=trainer.partitioner,
                num_microbatches=3).train_step(micro_state, make_batch(1))


def test_bfloat16_compute_keeps_float32_params(trainer, initial_params):
    config = tiny_config(num_encoder_layers=1, num_decoder_layers=1, dtype="bfloat16")
    bf16 = Trainer(config=config, optimizer=make_optimizer("adafactor"),
                   partitioner=trainer.partitioner, alpha=ALPHA)
    state = bf16.init_from_params(initial_params)
    state, metrics = bf16.train_step(state, make_batch(14))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
    assert np.isfinite(float(metrics["loss"])) and 3.0 < float(metrics["loss"]) < 6.0  # ~ln(64)
    assert int(state.step) == 1


def test_bfloat16_matmuls_keep_float32_activations_and_track_float32_gradients(trainer, initial_params):
    """T5Config.matmul_dtype: bf16 products with float32 sums; activations, gradients and params stay float32."""
    batch = make_batch(15)
    mixed_config = CONFIG.replace(matmul_dtype="bfloat16")
    mixed = Trainer(config=mixed_config, optimizer=optax.sgd(1.0), partitioner=trainer.partitioner, alpha=ALPHA)

    def grads(model):
        return jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(initial_params)

    hlo = jax.jit(lambda p: mixed.model.logits(p, batch)).lower(initial_params).as_text()
    assert "bf16" in hlo and mixed.model.logits(initial_params, batch).dtype == np.float32
    want, got = grads(trainer.model), grads(mixed.model)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        assert g.dtype == np.float32
    flat_want = np.concatenate([np.ravel(w) for w in jax.tree.leaves(want)])
    flat_got = np.concatenate([np.ravel(g) for g in jax.tree.leaves(got)])
    error = np.linalg.norm(flat_got - flat_want) / np.linalg.norm(flat_want)
    assert 0 < error < 2e-2  # rounded to bf16's 8 bits, yet the same gradient
    with pytest.raises(UserError, match="matmul_dtype"):
        CONFIG.replace(matmul_dtype="int8")


def test_bad_input_is_a_user_error(trainer, initial_params):
    with pytest.raises(UserError, match="alpha"):
        Trainer(config=CONFIG, optimizer=optax.sgd(1.0), partitioner=trainer.partitioner, alpha=1.5)
    broken = jax.tree.map(np.asarray, initial_params)
    broken["token_embedder"]["embedding"] = np.zeros((3, 3), np.float32)
    with pytest.raises(UserError, match="shape"):
        trainer.init_from_params(broken)
    del broken["token_embedder"]
    with pytest.raises(UserError, match="lack"):
        trainer.init_from_params(broken)


def test_trimmed_padding_gives_the_full_batchs_loss(trainer, initial_params):
    """Unpacked rows cut to their bucket (input_pipeline.trim_padding): same loss, fewer columns."""
    from distill.input_pipeline import trim_padding

    rows = make_batch(3, input_length=24, target_length=16)  # padded out to 64 / 48 columns, as seqio pads
    batch = {name: np.pad(value, ((0, 0), (0, (64 if name.startswith("encoder") else 48) - value.shape[1])))
             for name, value in rows.items()}
    trimmed = trim_padding(batch)
    assert trimmed["encoder_input_tokens"].shape[1] == 32 and trimmed["decoder_target_tokens"].shape[1] == 16
    for name, value in batch.items():  # nothing but padding was cut
        assert not value[:, trimmed[name].shape[1]:].any()
        np.testing.assert_array_equal(value[:, :trimmed[name].shape[1]], trimmed[name])
    state = trainer.init_from_params(initial_params)
    full, cut = trainer.eval_step(state, batch), trainer.eval_step(state, trimmed)
    for key in ("loss", "label_loss", "rationale_loss", "label_tokens", "rationale_tokens"):
        np.testing.assert_allclose(float(cut[key]), float(full[key]), rtol=1e-5, atol=1e-6)


def test_each_batch_shape_compiles_once(initial_params):
    """The step compiled ahead of its first run (to release compiler memory first) is the one that runs."""
    trainer = Trainer(config=CONFIG, optimizer=optax.sgd(1.0),
                      partitioner=Partitioner(compiler_options=FAST_COMPILE), alpha=ALPHA)
    state = trainer.init_from_params(initial_params)
    compiles = []

    def count(event, _seconds, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        for seed, packed in ((21, False), (22, False), (23, True), (24, True)):
            state, metrics = trainer.train_step(state, make_batch(seed, packed=packed))
        metrics = trainer.eval_step(state, make_batch(25))
        jax.block_until_ready(metrics)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert len(compiles) == 3, compiles  # train unpacked, train packed, eval unpacked
