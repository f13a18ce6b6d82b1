"""The step-by-step loss against its formula written out in numpy (DESIGN.md section 1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import losses
from trainer_helpers import make_batch, numpy_step_by_step_loss

VOCAB = 64


def _logits(batch, seed=0):
    rng = np.random.default_rng(seed)
    shape = batch["decoder_target_tokens"].shape + (VOCAB,)
    return rng.normal(0.0, 3.0, shape).astype(np.float32)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("alpha", [0.5, 0.8, 1.0])
def test_loss_matches_numpy_formula(packed, alpha):
    batch = make_batch(1, packed=packed, batch_size=6)
    counts = losses.task_token_counts(batch)
    assert counts["label_tokens"] > 0 and counts["rationale_tokens"] > 0  # a mixed batch
    logits = _logits(batch)
    loss, metrics = losses.step_by_step_loss(logits, batch, alpha=alpha)
    np.testing.assert_allclose(loss, numpy_step_by_step_loss(logits, batch, alpha), rtol=1e-5)
    # The per-task terms are means over each task's own tokens, not a mixed token mean.
    mixed_mean = numpy_step_by_step_loss(
        logits, {**batch, "decoder_task_ids": np.zeros_like(batch["decoder_task_ids"])}, 1.0
    )
    assert abs(float(metrics["label_loss"]) - mixed_mean) > 1e-3
    label_mask = (batch["decoder_task_ids"] == 0) & (batch["decoder_loss_weights"] > 0)
    assert float(metrics["label_tokens"]) == label_mask.sum()


def test_no_rationale_tokens_gives_alpha_times_label_term():
    batch = make_batch(2, rationale_fraction=0.0)
    assert not batch["decoder_task_ids"].any()
    logits = _logits(batch)
    loss, metrics = losses.step_by_step_loss(logits, batch, alpha=0.5)
    assert np.isfinite(loss)
    assert float(metrics["rationale_tokens"]) == 0.0
    assert float(metrics["rationale_loss"]) == 0.0
    np.testing.assert_allclose(loss, 0.5 * metrics["label_loss"], rtol=1e-6)
    # Gradients stay finite too (no 0/0 in the backward pass).
    grads = jax.grad(lambda x: losses.step_by_step_loss(x, batch, alpha=0.5)[0])(jnp.asarray(logits))
    assert np.isfinite(np.asarray(grads)).all()


def test_no_tokens_at_all_gives_zero():
    batch = make_batch(3)
    batch["decoder_loss_weights"] = np.zeros_like(batch["decoder_loss_weights"])
    loss, _ = losses.step_by_step_loss(_logits(batch), batch)
    assert float(loss) == 0.0


def test_label_smoothing_is_zero_at_the_smoothed_optimum_and_matches_formula():
    batch = make_batch(4, batch_size=4)
    smoothing = 0.1
    targets = batch["decoder_target_tokens"]
    confidence, low = 1 - smoothing, smoothing / (VOCAB - 1)
    soft = np.full(targets.shape + (VOCAB,), low)
    np.put_along_axis(soft, targets[..., None], confidence, -1)
    loss, _ = losses.step_by_step_loss(np.log(soft).astype(np.float32), batch,
                                       label_smoothing=smoothing)
    assert abs(float(loss)) < 1e-5
    # Away from the optimum: cross entropy against the soft targets minus its entropy.
    logits = _logits(batch)
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce = -(soft * logp).sum(-1) + (soft * np.log(soft)).sum(-1)
    weights = batch["decoder_loss_weights"] > 0
    expected = [ce[weights & (batch["decoder_task_ids"] == t)].mean() for t in (0, 1)]
    loss, metrics = losses.step_by_step_loss(logits, batch, label_smoothing=smoothing)
    np.testing.assert_allclose(metrics["label_loss"], expected[0], rtol=1e-4)
    np.testing.assert_allclose(loss, 0.5 * expected[0] + 0.5 * expected[1], rtol=1e-4)


def test_z_loss_adds_squared_log_normalizer():
    batch = make_batch(5)
    logits = _logits(batch)
    base, base_metrics = losses.step_by_step_loss(logits, batch, alpha=0.3)
    with_z, metrics = losses.step_by_step_loss(logits, batch, alpha=0.3, z_loss=1e-2)
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    weights = batch["decoder_loss_weights"] > 0
    z_terms = [1e-2 * (log_z[weights & (batch["decoder_task_ids"] == t)] ** 2).mean() for t in (0, 1)]
    np.testing.assert_allclose(with_z - base, 0.3 * z_terms[0] + 0.7 * z_terms[1], rtol=1e-4)
    assert float(metrics["z_loss"]) > 0
    # The reported per-task CE excludes the z-loss term.
    np.testing.assert_allclose(metrics["label_loss"], base_metrics["label_loss"], rtol=1e-6)


def test_microbatch_sums_with_global_counts_add_up_to_full_loss():
    batch = make_batch(6, batch_size=8, packed=True)
    logits = _logits(batch)
    full, _ = losses.step_by_step_loss(logits, batch, alpha=0.6)
    counts = losses.task_token_counts(batch)
    parts = []
    for rows in (slice(0, 3), slice(3, 8)):
        sub = {k: v[rows] for k, v in batch.items()}
        parts.append(losses.loss_from_sums(losses.loss_sums(logits[rows], sub), alpha=0.6,
                                           token_counts=counts)[0])
    np.testing.assert_allclose(sum(parts), full, rtol=1e-5)


def test_accuracy_counts_label_tokens_only():
    batch = make_batch(7, batch_size=4)
    targets = batch["decoder_target_tokens"]
    logits = np.zeros(targets.shape + (VOCAB,), np.float32)
    np.put_along_axis(logits, targets[..., None], 5.0, -1)  # perfect everywhere...
    rationale = batch["decoder_task_ids"] == 1
    logits[rationale] = np.roll(logits[rationale], 1, axis=-1)  # ...except on rationale tokens
    _, metrics = losses.step_by_step_loss(logits, batch)
    assert float(metrics["accuracy"]) == 1.0
    label = (batch["decoder_task_ids"] == 0) & (batch["decoder_loss_weights"] > 0)
    logits[label] = np.roll(logits[label], 1, axis=-1)
    _, metrics = losses.step_by_step_loss(logits, batch)
    assert float(metrics["accuracy"]) == 0.0


def test_log_softmax_matches_float64_formula():
    """The decoders' log softmax against float64 numpy: rows offset far from zero stay stable."""
    rng = np.random.default_rng(3)
    logits = (rng.normal(0.0, 4.0, (5, 3, 1000)) + rng.normal(0.0, 40.0, (5, 3, 1))).astype(np.float32)
    logits[0, 0, :10] = -np.inf  # masked entries stay -inf, the rest stay finite
    wide = logits.astype(np.float64)
    peak = wide.max(-1, keepdims=True)
    expected = wide - (peak + np.log(np.exp(wide - peak).sum(-1, keepdims=True)))
    got = np.asarray(jax.jit(losses.log_softmax)(jnp.asarray(logits)))
    assert np.isneginf(got[0, 0, :10]).all() and np.isfinite(got[0, 0, 10:]).all()
    np.testing.assert_allclose(got, expected, atol=3e-5, rtol=0)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)
