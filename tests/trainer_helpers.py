"""Tiny T5 configs and synthetic training batches in THE training batch format.

`make_batch` produces what `distill.feature_converters.StepByStepFeatureConverter`
yields (numpy int32, [batch, length]): encoder_input_tokens,
decoder_input_tokens, decoder_target_tokens, decoder_loss_weights,
decoder_task_ids, and when packed the segment ids / positions. Rows mix the
label task (short targets, task id 0) and the rationale task (long targets,
task id 1), so per-task loss terms are exercised. Other helpers' tests may
reuse it.
"""
from __future__ import annotations

import numpy as np

PAD, EOS = 0, 1
# XLA options that cut CPU compile time ~3x for the tiny test models (numerics unchanged
# in kind: still float32, just fewer backend optimizations).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FIRST_WORD = 3  # ids 0..2 are pad/eos/unk


def tiny_config(**overrides):
    """A T5 small enough to compile in a second; heads/mlp divide a model axis of 4."""
    from distill.models.t5 import T5Config

    fields = dict(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_heads=4,
        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )
    fields.update(overrides)
    return T5Config(**fields)


def _example(rng: np.random.Generator, task: int, vocab_size: int, max_in: int, max_out: int):
    """(inputs, targets) token lists, EOS-terminated; labels short, rationales long."""
    n_in = int(rng.integers(2, max_in))
    n_out = int(rng.integers(1, 4)) if task == 0 else int(rng.integers(max_out // 2, max_out))
    inputs = list(rng.integers(FIRST_WORD, vocab_size, n_in - 1)) + [EOS]
    targets = list(rng.integers(FIRST_WORD, vocab_size, max(n_out - 1, 1))) + [EOS]
    return inputs, targets


def make_batch(
    seed: int,
    *,
    batch_size: int = 8,
    input_length: int = 16,
    target_length: int = 12,
    vocab_size: int = 64,
    packed: bool = False,
    rationale_fraction: float = 0.5,
) -> dict[str, np.ndarray]:
    """A deterministic synthetic batch (see module docstring).

    rationale_fraction: probability that an example is a rationale-task one
    (0.0 gives a label-only batch, i.e. standard fine-tuning).
    """
    rng = np.random.default_rng(seed)
    shape = (batch_size, target_length)
    batch = {
        "encoder_input_tokens": np.zeros((batch_size, input_length), np.int32),
        "decoder_input_tokens": np.zeros(shape, np.int32),
        "decoder_target_tokens": np.zeros(shape, np.int32),
        "decoder_loss_weights": np.zeros(shape, np.int32),
        "decoder_task_ids": np.zeros(shape, np.int32),
    }
    if packed:
        for name, length in (("encoder", input_length), ("decoder", target_length)):
            batch[f"{name}_segment_ids"] = np.zeros((batch_size, length), np.int32)
            batch[f"{name}_positions"] = np.zeros((batch_size, length), np.int32)
    for row in range(batch_size):
        in_pos = out_pos = 0
        segment = 0
        while True:
            task = int(rng.random() < rationale_fraction)
            max_in = input_length // 2 + 1 if packed else input_length
            inputs, targets = _example(rng, task, vocab_size, max_in, target_length)
            if in_pos + len(inputs) > input_length or out_pos + len(targets) > target_length:
                break
            segment += 1
            ins = slice(in_pos, in_pos + len(inputs))
            outs = slice(out_pos, out_pos + len(targets))
            batch["encoder_input_tokens"][row, ins] = inputs
            batch["decoder_target_tokens"][row, outs] = targets
            batch["decoder_input_tokens"][row, outs] = [PAD] + targets[:-1]
            batch["decoder_loss_weights"][row, outs] = 1
            batch["decoder_task_ids"][row, outs] = task
            if packed:
                batch["encoder_segment_ids"][row, ins] = segment
                batch["decoder_segment_ids"][row, outs] = segment
                batch["encoder_positions"][row, ins] = np.arange(len(inputs))
                batch["decoder_positions"][row, outs] = np.arange(len(targets))
            in_pos += len(inputs)
            out_pos += len(targets)
            if not packed:
                break
    return batch


def numpy_step_by_step_loss(logits: np.ndarray, batch: dict, alpha: float) -> float:
    """DESIGN.md section 1 written out in float64 numpy: the reference for the tests."""
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = batch["decoder_target_tokens"]
    ce = -np.take_along_axis(logprobs, targets[..., None], -1)[..., 0]
    weights = batch["decoder_loss_weights"] > 0
    terms = []
    for task in (0, 1):
        mask = weights & (batch["decoder_task_ids"] == task)
        terms.append(ce[mask].sum() / mask.sum() if mask.any() else 0.0)
    return alpha * terms[0] + (1 - alpha) * terms[1]
