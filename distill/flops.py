"""FLOP counts of an encoder-decoder T5 (training and decoding), for MFU and ceilings in benchmarks.

Why our own count: an encoder-decoder does not fit the decoder-only "6 * N *
tokens" rule, because encoder weights see only input tokens and decoder
weights (including the LM head) see only target tokens. The count is

    train FLOPs = 6 * (N_enc * input_tokens + N_dec * target_tokens)
                + attention score/value terms (below)

where N_enc / N_dec count matmul weights only (embedding lookups, layer
norms and relative position biases are not matmuls and are left out), the
factor 6 is 2 (multiply-add) * 3 (forward + two backward matmuls), and the
attention terms are, per layer and token, 2 * 2 * context * (heads * d_kv)
for QK^T and AV in the forward pass, times 3 for training:

    encoder self-attention:    12 * heads * d_kv * Li   per input token
    decoder self-attention:    12 * heads * d_kv * Lt   per target token
    decoder cross-attention:   12 * heads * d_kv * Li   per target token

with Li / Lt the padded (packed) lengths the kernels actually see; causal
masking is not halved (XLA computes the full square). Token counts passed
in are the NON-padding tokens, so MFU here is the strict "useful work"
figure: padding the batch lowers it.

`decode_flops` counts inference the same way (forward only, factor 2).
Divided into a matmul peak measured on the spot (`matmul_peak`), a count
gives the ceiling: the most examples/s any implementation computing those
tokens could reach on this machine. The benchmarks print it next to their
ratios, so a target past the machine's arithmetic shows as such
(scripts/bench_train.py, scripts/bench_decode.py).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Matmul weight counts of one model: encoder, decoder (with LM head)."""

    encoder: int
    decoder: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.encoder + self.decoder


def _mlp_params(config: Any) -> int:
    gated = str(config.feed_forward_proj).startswith("gated")
    return (3 if gated else 2) * config.d_model * config.d_ff


def param_counts(config: Any) -> ParamCounts:
    """Matmul weights of a T5Config-shaped object (d_model, d_kv, d_ff, ...)."""
    inner = config.num_heads * config.d_kv
    attention = 4 * config.d_model * inner  # q, k, v, o
    mlp = _mlp_params(config)
    encoder = config.num_encoder_layers * (attention + mlp)
    lm_head = config.d_model * config.vocab_size
    decoder = config.num_decoder_layers * (2 * attention + mlp) + lm_head
    return ParamCounts(encoder=encoder, decoder=decoder, lm_head=lm_head)


def train_flops(config: Any, *, input_tokens: int, target_tokens: int, input_length: int,
                target_length: int) -> float:
    """FLOPs of one training step (forward + backward) on the given tokens.

    input_tokens / target_tokens: non-padding tokens in the global batch;
    input_length / target_length: the padded lengths Li, Lt of the batch.
    """
    counts = param_counts(config)
    inner = config.num_heads * config.d_kv
    dense = 6.0 * (counts.encoder * input_tokens + counts.decoder * target_tokens)
    enc_attn = 12.0 * config.num_encoder_layers * inner * input_length * input_tokens
    dec_attn = 12.0 * config.num_decoder_layers * inner * (target_length + input_length) * target_tokens
    return dense + enc_attn + dec_attn


def mfu(flops_per_step: float, steps_per_second: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilization in [0, 1], or None when no peak FLOP/s is given.

    peak_flops is the whole job's peak (per-chip peak * number of chips).
    """
    if not peak_flops:
        return None
    return flops_per_step * steps_per_second / peak_flops


def decode_flops(config: Any, *, input_lengths: Sequence[int], new_tokens: int, beams: int = 1) -> float:
    """Useful FLOPs of decoding one row per input (`input_lengths`: its non-padding tokens) to `new_tokens` each.

    The encoder runs once over the input tokens, and so do the cross-attention
    key and value projections (every KV-cache decoder projects them once);
    each of a row's `beams` hypotheses then runs the rest of the decoder and
    the LM head once per new token, and attends to the tokens decoded so far
    (on average (new_tokens + 1) / 2) and to its input's tokens. Forward only:
    2 FLOPs a multiply-add. Beam search's bookkeeping (top-k, reordering) is
    not a product and is left out.
    """
    counts = param_counts(config)
    inner = config.num_heads * config.d_kv
    cross_kv = config.num_decoder_layers * 2 * config.d_model * inner
    tokens = sum(input_lengths)
    encoder = 2.0 * (counts.encoder + cross_kv) * tokens
    encoder += 4.0 * config.num_encoder_layers * inner * sum(length * length for length in input_lengths)
    per_token = 2.0 * (counts.decoder - cross_kv) + 4.0 * config.num_decoder_layers * inner * (new_tokens + 1) / 2
    cross_attention = 4.0 * config.num_decoder_layers * inner * tokens  # every row's tokens, once per new token
    return encoder + beams * new_tokens * (len(input_lengths) * per_token + cross_attention)


def matmul_peak(dtype: str = "float32", seconds: float = 1.0) -> float:
    """FLOP/s of one jitted jnp.dot of `dtype` operands (float32 sums), measured now: the best of a few
    T5 shapes ([rows, d_model] x [d_model, d_ff] and back), each run for seconds / 3."""
    import jax
    import jax.numpy as jnp

    best = 0.0
    for m, k, n in ((2048, 256, 1024), (2048, 1024, 256), (8192, 1024, 256)):
        x, w = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
        dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
        jax.block_until_ready(dot(x, w))
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            jax.block_until_ready(dot(x, w))
            runs += 1
        best = max(best, 2 * m * k * n * runs / (time.perf_counter() - start))
    return best
