"""The student model: the T5 network plus what training and inference do with it.

T5X splits a network (a pure Flax module) from a model object that owns the
training contract and inference; so do we. `distill/models/t5.py` is the
network; `StudentModel` holds the loss settings and gives

    loss_fn(params, batch, dropout_rng, token_counts) -> (loss, per-task sums)
    predict_batch(params, encoder_input_tokens [b, Li], ...) -> tokens [b, L]
    score_batch(params, batch) -> log-likelihood of each row's targets [b]

`distill/trainer.py`'s pure steps call `loss_fn`; `predict_batch` is the
compiled decoders of distill/predict.py; `score_batch` ranks candidate
targets (e.g. answer choices) or measures how likely the student finds a
teacher's label. A frozen dataclass of hashable fields, so a model can be a
static argument of a compiled function.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from distill import losses
from distill.models.t5 import T5, T5Config

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StudentModel:
    """A T5 student trained on the step-by-step loss.

    alpha: label-task weight (1.0 = label task only: standard fine-tuning or
    distillation); label_smoothing, z_loss: see distill/losses.py.
    """

    config: T5Config
    alpha: float = 0.5
    label_smoothing: float = 0.0
    z_loss: float = 0.0

    @property
    def network(self) -> T5:
        return T5(self.config)

    def logits(self, params: Any, batch: Batch, dropout_rng: jax.Array | None = None) -> jax.Array:
        """Teacher-forced decoder logits [batch, targets_length, vocab]; dropout iff dropout_rng."""
        return self.network.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            enable_dropout=dropout_rng is not None,
            rngs={"dropout": dropout_rng} if dropout_rng is not None else None,
        )

    def loss_fn(
        self,
        params: Any,
        batch: Batch,
        dropout_rng: jax.Array | None,
        token_counts: Mapping[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss, per-task sums) of one (micro)batch.

        `token_counts` are the denominators of the per-task means (default:
        this batch's counts; the global batch's under gradient accumulation).
        """
        sums = losses.loss_sums(self.logits(params, batch, dropout_rng), batch,
                                label_smoothing=self.label_smoothing, z_loss=self.z_loss)
        loss, _ = losses.loss_from_sums(sums, alpha=self.alpha, token_counts=token_counts)
        return loss, sums

    def score_batch(self, params: Any, batch: Batch) -> jax.Array:
        """Sum of target-token log-probabilities per row [batch] (no dropout, no smoothing).

        Tokens with decoder_loss_weights 0 (padding) are left out; a packed
        row's score is the sum over all its segments.
        """
        logits = self.logits(params, batch).astype(jnp.float32)
        log_probs = losses.log_softmax(logits)
        targets = batch["decoder_target_tokens"]
        token_scores = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        return (token_scores * batch["decoder_loss_weights"]).sum(axis=-1)

    def predict_batch(self, params: Any, encoder_input_tokens: jax.Array, **decoding: Any) -> jax.Array:
        """Decoded tokens [b, max_decode_length] for inputs [b, Li] (see distill/predict.py's predict_batch)."""
        from distill.predict import predict_batch

        return predict_batch(self.config, params, encoder_input_tokens, **decoding)
