"""The step-by-step multi-task loss: alpha * label-task mean CE + (1 - alpha) * rationale-task mean CE.

    L = alpha * mean CE over label-task target tokens
      + (1 - alpha) * mean CE over rationale-task target tokens

each mean taken over the *global* batch, never a plain token mean over the
mixed batch (rationales are ~10x longer than labels and would swamp the label
term). The task of every target token comes from `decoder_task_ids`
(0 = label, 1 = rationale), so packed rows holding both tasks work unchanged.

The loss is linear in per-task *sums*; gradient accumulation therefore sums
`loss_from_sums(microbatch_sums, token_counts=global_counts)` over
microbatches, which equals the full-batch loss exactly.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from distill.argmax import argmax_last_axis

# Task ids, the one definition: examples carry them (distill/tasks.py), the feature converter
# spreads them over target tokens, the loss splits on them.
LABEL_TASK = 0
RATIONALE_TASK = 1

# Keys of the per-task sums that `loss_sums` returns (all float32 scalars).
SUM_KEYS = (
    "label_ce", "rationale_ce", "label_z", "rationale_z",
    "label_tokens", "rationale_tokens", "label_correct",
)


def token_cross_entropy(
    logits: jax.Array, targets: jax.Array, *, label_smoothing: float = 0.0, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token cross entropy with T5X-style label smoothing, plus z-loss.

    Args:
      logits: [batch, length, vocab] (any float dtype; computed in float32).
      targets: [batch, length] int token ids.
    Returns:
      (ce [batch, length], z [batch, length], correct [batch, length]):
      `ce` is the smoothed CE minus its minimum (the entropy of the smoothed
      target), so a perfect model scores 0; `z = z_loss * logsumexp(logits)**2`
      keeps the softmax normalizer near 1; `correct` is argmax == target.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    target_logprob = target_logit - log_z
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        sum_logprob = jnp.sum(logits, axis=-1) - vocab * log_z
        ce = -(confidence - low) * target_logprob - low * sum_logprob
        normalizing_constant = -(
            confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20)
        )
        ce = ce - normalizing_constant
    else:
        ce = -target_logprob
    z = z_loss * jnp.square(log_z)
    correct = (argmax_last_axis(logits) == targets).astype(jnp.float32)
    return ce, z, correct


def log_sum_exp(logits: jax.Array, peak: jax.Array) -> jax.Array:
    """log sum exp over the last axis as `peak + log sum exp(logits - peak)`, given each row's max `peak` [..., 1].

    The row max comes in from the caller: log_softmax takes it with jnp.max, beam search
    (distill/decoding.py, `top_continuations`) from the chunk maxima it needs anyway.
    """
    return peak + jnp.log(jnp.sum(jnp.exp(logits - peak), axis=-1, keepdims=True))


def log_softmax(logits: jax.Array) -> jax.Array:
    """log softmax over the last axis, as `logits - (max + log sum exp(logits - max))`.

    jax.nn.log_softmax subtracts the max first and reuses the shifted logits twice; after
    a vocabulary product XLA:CPU then fuses the product, the max and the subtraction into
    one YNNPACK fusion that runs at a third of the product's own rate (beam search's
    [128, 512] x [512, 32128] step: 60 ms against 24 ms this way). The result differs
    from jax.nn.log_softmax by rounding only: about one ulp of the row's largest logit.
    """
    return logits - log_sum_exp(logits, jnp.max(logits, axis=-1, keepdims=True))


def task_weights(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(label weights, rationale weights), each [batch, length] float32."""
    weights = jnp.asarray(batch["decoder_loss_weights"]).astype(jnp.float32)
    task = jnp.asarray(batch["decoder_task_ids"])
    return weights * (task == LABEL_TASK), weights * (task == RATIONALE_TASK)


def task_token_counts(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Target-token counts per task: {"label_tokens", "rationale_tokens"} float32 scalars."""
    label_w, rationale_w = task_weights(batch)
    return {"label_tokens": label_w.sum(), "rationale_tokens": rationale_w.sum()}


def loss_sums(
    logits: jax.Array,
    batch: Mapping[str, jax.Array],
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> dict[str, jax.Array]:
    """Per-task sums over the batch (see `SUM_KEYS`); logits [batch, length, vocab]."""
    ce, z, correct = token_cross_entropy(
        logits, batch["decoder_target_tokens"], label_smoothing=label_smoothing, z_loss=z_loss
    )
    label_w, rationale_w = task_weights(batch)
    return {
        "label_ce": (ce * label_w).sum(),
        "rationale_ce": (ce * rationale_w).sum(),
        "label_z": (z * label_w).sum(),
        "rationale_z": (z * rationale_w).sum(),
        "label_tokens": label_w.sum(),
        "rationale_tokens": rationale_w.sum(),
        "label_correct": (correct * label_w).sum(),
    }


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 where den == 0 (a task absent from the batch adds nothing)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def loss_from_sums(
    sums: Mapping[str, jax.Array],
    *,
    alpha: float = 0.5,
    token_counts: Mapping[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted loss from per-task sums.

    `token_counts` (default: the counts in `sums`) are the denominators: pass
    the global batch's counts when `sums` covers one microbatch.
    """
    counts = token_counts if token_counts is not None else sums
    label_n, rationale_n = counts["label_tokens"], counts["rationale_tokens"]
    label_term = _safe_div(sums["label_ce"] + sums["label_z"], label_n)
    rationale_term = _safe_div(sums["rationale_ce"] + sums["rationale_z"], rationale_n)
    loss = alpha * label_term + (1.0 - alpha) * rationale_term
    metrics = metrics_from_sums(sums)
    metrics["loss"] = loss
    return loss, metrics


def metrics_from_sums(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Readable metrics: per-task mean CE (without z-loss), counts, label token accuracy."""
    tokens = sums["label_tokens"] + sums["rationale_tokens"]
    return {
        "label_loss": _safe_div(sums["label_ce"], sums["label_tokens"]),
        "rationale_loss": _safe_div(sums["rationale_ce"], sums["rationale_tokens"]),
        "z_loss": _safe_div(sums["label_z"] + sums["rationale_z"], tokens),
        "label_tokens": sums["label_tokens"],
        "rationale_tokens": sums["rationale_tokens"],
        "accuracy": _safe_div(sums["label_correct"], sums["label_tokens"]),
    }


def step_by_step_loss(
    logits: jax.Array,
    batch: Mapping[str, jax.Array],
    *,
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """alpha * label-task mean CE + (1 - alpha) * rationale-task mean CE.

    Args:
      logits: [batch, length, vocab] decoder logits.
      batch: the training batch (decoder_target_tokens, decoder_loss_weights,
        decoder_task_ids; each [batch, length]); packed or not.
      alpha: label-task weight; 1.0 = standard fine-tuning / distillation.
    Returns:
      (loss scalar, metrics): loss, label_loss, rationale_loss, z_loss,
      label_tokens, rationale_tokens, accuracy (label-task token accuracy).
    """
    sums = loss_sums(logits, batch, label_smoothing=label_smoothing, z_loss=z_loss)
    return loss_from_sums(sums, alpha=alpha)
