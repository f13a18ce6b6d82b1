"""Helpers for the tests that drive upstream T5X (tests/test_t5x_*.py).

T5X is not on the package registry: CI unpacks ../shared/third_party with
use-t5x.sh and points DISTILL_T5X_SRC at the folder (it holds t5x/, airio/
and jestimator/). Tests skip with a message when that is absent or T5X does
not import. Also: a tiny T5X network, a fixed mixed-task batch and the
paper's loss in float64 numpy, shared by the in-process test and its
4-device worker (tests/t5x_sharded_worker.py).
"""
from __future__ import annotations

import os
import sys

import numpy as np

T5X_PACKAGES = ("t5x", "airio", "jestimator")
VOCAB = 64


def t5x_paths() -> list[str]:
    """The three source folders under $DISTILL_T5X_SRC ([] when unset)."""
    root = os.environ.get("DISTILL_T5X_SRC")
    return [os.path.join(root, name) for name in T5X_PACKAGES] if root else []


def require_t5x() -> None:
    """Put T5X on sys.path, or skip the calling test when it cannot be imported."""
    import pytest

    paths = t5x_paths()
    if not paths:
        pytest.skip("DISTILL_T5X_SRC is not set (bash ../shared/third_party/use-t5x.sh DIR; export DISTILL_T5X_SRC=DIR)")
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        import t5x.models  # noqa: F401
        import t5x.trainer  # noqa: F401
    except ImportError as err:
        pytest.skip(f"T5X under DISTILL_T5X_SRC does not import: {err}")


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ with T5X's folders first on PYTHONPATH, plus `extra`."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(t5x_paths() + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def tiny_network(**overrides):
    """T5X's own T5 (t5x.examples.t5.network) at test size, float32, no dropout."""
    from t5x.examples.t5 import network

    fields = dict(vocab_size=VOCAB, dtype="float32", emb_dim=8, num_heads=2, num_encoder_layers=2,
                  num_decoder_layers=2, head_dim=4, mlp_dim=16, mlp_activations=("gelu", "linear"),
                  dropout_rate=0.0, logits_via_embedding=False)
    fields.update(overrides)
    return network.Transformer(network.T5Config(**fields))


def tiny_model(*, alpha: float = 0.3, z_loss: float = 1e-4, label_smoothing: float = 0.1, optimizer=None):
    """StepByStepModel around `tiny_network()` (Adafactor unless `optimizer`)."""
    import seqio
    from t5x import adafactor

    from distill import t5x_model

    vocabulary = seqio.PassThroughVocabulary(VOCAB)
    return t5x_model.StepByStepModel(
        module=tiny_network(), input_vocabulary=vocabulary, output_vocabulary=vocabulary,
        optimizer_def=optimizer or adafactor.Adafactor(), alpha=alpha, z_loss=z_loss,
        label_smoothing=label_smoothing,
    )


def mixed_batch(rows: int = 8, inputs: int = 12, targets: int = 10) -> dict[str, np.ndarray]:
    """A packed batch mixing the tasks unevenly: short label targets, long rationales, some rows holding both.

    Row r holds one example (task r % 3 == 0 -> rationale) or, for odd r, a
    label example packed in front of a rationale one; the rows of the first
    half carry most label tokens, so per-half token counts differ from the
    whole batch's (what makes microbatched counts matter).
    """
    rng = np.random.default_rng(0)
    batch = {k: np.zeros((rows, inputs if k.startswith("encoder") else targets), np.int32) for k in (
        "encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_target_tokens",
        "decoder_input_tokens", "decoder_loss_weights", "decoder_segment_ids", "decoder_positions",
        "decoder_task_ids")}
    for r in range(rows):
        first_task = 1 if r % 3 == 0 else 0
        segments = [(first_task, 2 + r % 3 if first_task == 0 else 7)]
        if r % 2 == 1 and r < rows // 2:
            segments = [(0, 2), (1, 5)]
        enc_at = dec_at = 0
        for seg, (task, length) in enumerate(segments, start=1):
            enc_len = 3 + (r + seg) % 3
            enc = rng.integers(2, VOCAB, enc_len)
            enc[-1] = 1
            tgt = rng.integers(2, VOCAB, length)
            tgt[-1] = 1
            sl = slice(enc_at, enc_at + enc_len)
            batch["encoder_input_tokens"][r, sl] = enc
            batch["encoder_segment_ids"][r, sl] = seg
            batch["encoder_positions"][r, sl] = np.arange(enc_len)
            dl = slice(dec_at, dec_at + length)
            batch["decoder_target_tokens"][r, dl] = tgt
            batch["decoder_input_tokens"][r, dl] = np.concatenate([[0], tgt[:-1]])
            batch["decoder_loss_weights"][r, dl] = 1
            batch["decoder_segment_ids"][r, dl] = seg
            batch["decoder_positions"][r, dl] = np.arange(length)
            batch["decoder_task_ids"][r, dl] = task
            enc_at, dec_at = enc_at + enc_len, dec_at + length
    return batch


def numpy_loss(logits: np.ndarray, batch: dict, *, alpha: float, z_loss: float, label_smoothing: float,
               counts: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(loss, label mean CE, rationale mean CE) in float64, straight from DESIGN.md section 1.

    `counts` (label tokens, rationale tokens) replaces the batch's own as
    the denominators of the loss (the CE means stay over this batch).
    """
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
    logp = logits - lse[..., None]
    targets = batch["decoder_target_tokens"]
    target_logp = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    vocab = logits.shape[-1]
    confidence, low = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
    ce = -(confidence - low) * target_logp - low * logp.sum(-1)
    if label_smoothing:
        ce += confidence * np.log(confidence) + (vocab - 1) * low * np.log(low)
    z = z_loss * lse ** 2
    weights = batch["decoder_loss_weights"].astype(np.float64)
    label_w = weights * (batch["decoder_task_ids"] == 0)
    rationale_w = weights * (batch["decoder_task_ids"] == 1)
    n_label, n_rationale = counts or (label_w.sum(), rationale_w.sum())
    loss = (alpha * ((ce + z) * label_w).sum() / n_label
            + (1 - alpha) * ((ce + z) * rationale_w).sum() / n_rationale)
    return float(loss), float((ce * label_w).sum() / label_w.sum()), float((ce * rationale_w).sum() / rationale_w.sum())


def token_rows(rows: int = 3, inputs: int = 9, targets: int = 7, vocab: int = VOCAB) -> tuple[np.ndarray, ...]:
    """(encoder tokens [rows, inputs] with trailing padding, decoder inputs, decoder targets [rows, targets])."""
    rng = np.random.default_rng(1)
    encoder = rng.integers(2, vocab, (rows, inputs)).astype(np.int32)
    encoder[0, inputs - 3:] = 0
    target = rng.integers(2, vocab, (rows, targets)).astype(np.int32)
    decoder = np.concatenate([np.zeros((rows, 1), np.int32), target[:, :-1]], axis=1)
    return encoder, decoder, target


def t5x_logits(network, params, encoder, decoder, target) -> np.ndarray:
    """T5X's own forward pass (t5x.examples.t5.network.Transformer), teacher-forced, no dropout."""
    return np.asarray(network.apply({"params": params}, encoder, decoder, target, enable_dropout=False))


def flax_logits(config, params, encoder, decoder) -> np.ndarray:
    """Our T5 (distill/models/t5.py) on the same tokens."""
    from distill.models.t5 import T5

    return np.asarray(T5(config).apply({"params": params}, encoder, decoder))


def hf_logits(folder, encoder, decoder) -> np.ndarray:
    """transformers' PyTorch T5 loaded from an exported folder."""
    import torch
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(encoder, dtype=torch.long),
                    attention_mask=torch.tensor(encoder != 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(decoder, dtype=torch.long))
    return out.logits.numpy()
