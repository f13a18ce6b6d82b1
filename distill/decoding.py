"""Autoregressive decoders over a key/value cache: greedy, sampling, beam search.

Every decoder is a pure JAX function built around one `lax.while_loop` whose
carry holds the tokens written so far and the model's per-row state (KV cache,
encoder outputs, masks). The model enters only through a `TokensToLogits`
callable, so the decoders are tested with hand-written logits before any model
exists, and the encoder runs once, outside the loop, in whoever builds the
state (`distill.predict`).

Call the decoders inside `jax.jit` (the callable is closed over, not traced):
`distill.predict.predict_batch` does, so a whole decode is one compiled program.

Conventions (T5's): the decoder starts from `start_id` (= pad = 0), stops a row
at `eos_id` (= 1) and fills the positions after EOS with `pad_id`. Returned
tokens never include the start token: `tokens[:, 0]` is the first prediction.

Beam search reproduces Hugging Face `generate(num_beams=k, do_sample=False)`
with its default `early_stopping=False`: hypotheses that emit EOS (or reach the
max length) are scored `sum(log p) / (generated_length ** length_penalty)`,
generated_length counting the EOS; a row stops once its k finished hypotheses
all beat the best running beam's score divided by the current length.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

from distill.argmax import argmax_last_axis
from distill.losses import log_softmax, log_sum_exp

PyTree = Any

# Additive penalty for "impossible" candidates; the value HF uses, so scores tie-break alike.
_LARGE_NEGATIVE = -1.0e9


class TokensToLogits(Protocol):
    """One decoder step: `(tokens [b, 1] int32, state) -> (logits [b, vocab] float32, new_state)`.

    `state` holds everything per row the model needs (KV cache, encoded inputs,
    masks): every leaf with ndim >= 1 has the batch as its leading axis, scalar
    leaves (such as a cache index) are shared by all rows.
    """

    def __call__(self, tokens: jax.Array, state: PyTree) -> tuple[jax.Array, PyTree]: ...


# ----------------------------------------------------------------------------
# Logit filters (HF semantics: temperature, then top-k, then top-p)
# ----------------------------------------------------------------------------


def top_k_filter(logits: jax.Array, top_k: int) -> jax.Array:
    """Set every logit below the k-th largest of its row to -inf. `logits`: [b, vocab].

    Ties with the k-th value survive (as in HF), so a row may keep more than k.
    `top_k <= 0` or `>= vocab` returns the logits unchanged.
    """
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    return jnp.where(logits < kth_largest, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Nucleus filter: keep the smallest set of most likely tokens whose mass reaches `top_p`.

    A token survives when the probability mass of the tokens strictly more
    likely than it is below `top_p`; the most likely token always survives.
    `logits`: [b, vocab]; `top_p >= 1` returns them unchanged.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    kept = mass_before < top_p
    # The smallest kept logit is the threshold; index 0 is always kept.
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


# ----------------------------------------------------------------------------
# Greedy and sampling: one token per row per step
# ----------------------------------------------------------------------------

ChooseFn = Callable[[jax.Array, jax.Array], jax.Array]  # (logits [b, V], step) -> tokens [b]


def _token_by_token(
    tokens_to_logits: TokensToLogits,
    state: PyTree,
    choose: ChooseFn,
    *,
    batch_size: int,
    max_decode_length: int,
    eos_id: int,
    start_id: int,
    pad_id: int,
) -> jax.Array:
    """The loop shared by greedy and sampling; `choose` picks each row's next token."""
    if max_decode_length < 1:
        raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}")

    def cond(carry):
        step, _, _, finished, _ = carry
        return (step < max_decode_length) & ~jnp.all(finished)

    def body(carry):
        step, tokens, last, finished, model_state = carry
        logits, model_state = tokens_to_logits(last[:, None], model_state)
        chosen = choose(logits.astype(jnp.float32), step).astype(jnp.int32)
        chosen = jnp.where(finished, pad_id, chosen)
        tokens = jax.lax.dynamic_update_slice(tokens, chosen[:, None], (0, step))
        return step + 1, tokens, chosen, finished | (chosen == eos_id), model_state

    carry = (
        jnp.int32(0),
        jnp.full((batch_size, max_decode_length), pad_id, jnp.int32),
        jnp.full((batch_size,), start_id, jnp.int32),
        jnp.zeros((batch_size,), jnp.bool_),
        state,
    )
    return jax.lax.while_loop(cond, body, carry)[1]


def greedy_decode(
    tokens_to_logits: TokensToLogits,
    state: PyTree,
    *,
    batch_size: int,
    max_decode_length: int,
    eos_id: int = 1,
    start_id: int = 0,
    pad_id: int = 0,
) -> jax.Array:
    """Argmax decoding (HF `do_sample=False, num_beams=1`). Returns tokens [b, max_decode_length].

    Stops when every row has emitted EOS or after `max_decode_length` tokens;
    positions after a row's EOS hold `pad_id`.
    """
    return _token_by_token(
        tokens_to_logits, state, lambda logits, step: argmax_last_axis(logits),
        batch_size=batch_size, max_decode_length=max_decode_length,
        eos_id=eos_id, start_id=start_id, pad_id=pad_id,
    )


def sample_decode(
    tokens_to_logits: TokensToLogits,
    state: PyTree,
    *,
    batch_size: int,
    max_decode_length: int,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int = 1,
    start_id: int = 0,
    pad_id: int = 0,
) -> jax.Array:
    """Ancestral sampling from softmax(logits / temperature), optionally top-k / top-p filtered.

    Deterministic for a given `rng`: step i draws with `fold_in(rng, i)`.
    `top_k` (0 = off) and `top_p` (1.0 = off) are Python numbers fixed at trace
    time. Returns tokens [b, max_decode_length], padded after EOS.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy_decode for argmax), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")

    def choose(logits: jax.Array, step: jax.Array) -> jax.Array:
        logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), logits, axis=-1)

    return _token_by_token(
        tokens_to_logits, state, choose,
        batch_size=batch_size, max_decode_length=max_decode_length,
        eos_id=eos_id, start_id=start_id, pad_id=pad_id,
    )


# ----------------------------------------------------------------------------
# Beam search (HF-compatible finishing rule)
# ----------------------------------------------------------------------------


KeyPath = tuple  # a jax.tree_util key path, e.g. (DictKey("cache"), DictKey("decoder"), ...)


def _kept_per_row(path: KeyPath, leaf: jax.Array, beam_invariant: Callable[[KeyPath], bool] | None) -> bool:
    """A state leaf beam search holds once per row, not per beam: scalars and `beam_invariant` leaves."""
    return leaf.ndim == 0 or (beam_invariant is not None and beam_invariant(path))


def expand_to_beams(state: PyTree, num_beams: int,
                    beam_invariant: Callable[[KeyPath], bool] | None = None) -> PyTree:
    """Repeat every batch-leading leaf per beam: [b, ...] -> [b * num_beams, ...] (rows b-major).

    Leaves that `beam_invariant` marks stay per row ([b, ...]), as do scalars.
    """
    def expand(path, leaf):
        leaf = jnp.asarray(leaf)
        if _kept_per_row(path, leaf, beam_invariant):
            return leaf
        return jnp.repeat(leaf, num_beams, axis=0)
    return jax.tree_util.tree_map_with_path(expand, state)


def top_continuations(logits: jax.Array, scores: jax.Array, count: int,
                      chunk: int = 128) -> tuple[jax.Array, jax.Array]:
    """The `count` best continuations of each row over all its beams, without writing them all out.

    logits [b, beams, vocab] (float32), scores [b, beams] (the beams' summed log-probs). The
    answer is jax.lax.top_k(totals, count) for totals = (log_softmax(logits) + scores[..., None])
    flattened to [b, beams * vocab]: (values [b, count], flat indices beam * vocab + token),
    ties to the lowest index. XLA:CPU's top_k walks a row one element at a time (6 ms for the
    [32, 4 x 32128] totals of a tiny T5 beam step), so the search goes by chunks of `chunk`
    columns: a value outside the `count` chunks with the largest maxima would have `count`
    larger values above it. Rounding is monotone, so a chunk's best total is its best logit's
    total: the chunk maxima of the logits choose the chunks and give each beam's max for the
    normalizer, and only the chosen chunks are normalized and searched. Two passes over the
    vocabulary (chunk maxima, sum of exp) where writing the totals out took four; the same
    values as log_softmax's op by op. The chunks stay in index order, so ties resolve as
    top_k's do.
    """
    b, beams, vocab = logits.shape
    if beams * vocab <= 4 * count * chunk:  # too few chunks to pay: the plain search
        totals = log_softmax(logits) + scores[..., None]
        return jax.lax.top_k(totals.reshape(b, beams * vocab), count)
    chunks = -(-vocab // chunk)
    padded = jnp.pad(logits, ((0, 0), (0, 0), (0, chunks * chunk - vocab)), constant_values=-jnp.inf)
    padded = padded.reshape(b, beams * chunks, chunk)
    chunk_peaks = jnp.max(padded, axis=-1).reshape(b, beams, chunks)
    normalizer = log_sum_exp(logits, jnp.max(chunk_peaks, axis=-1, keepdims=True))  # [b, beams, 1]
    peak_totals = (chunk_peaks - normalizer + scores[..., None]).reshape(b, beams * chunks)
    _, chosen = jax.lax.top_k(peak_totals, count)
    chosen = jnp.sort(chosen, axis=-1)  # [b, count] chunk ids, beam-major like the flat index
    beam = chosen // chunks
    candidates = jnp.take_along_axis(padded, chosen[:, :, None], axis=1)  # [b, count, chunk]
    offset = jnp.take_along_axis(normalizer[..., 0], beam, axis=1)
    bonus = jnp.take_along_axis(scores, beam, axis=1)
    totals = (candidates - offset[..., None] + bonus[..., None]).reshape(b, count * chunk)
    values, position = jax.lax.top_k(totals, count)
    picked = jnp.take_along_axis(chosen, position // chunk, axis=1)
    token = (picked % chunks) * chunk + position % chunk
    return values, (picked // chunks) * vocab + token


def _gather_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
    """x [b, n, ...] gathered along the beam axis by indices [b, m] -> [b, m, ...]."""
    indices = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, indices, axis=1)


def _gather_state(state: PyTree, parents: jax.Array, batch_size: int, num_beams: int,
                  beam_invariant: Callable[[KeyPath], bool] | None) -> PyTree:
    """Reorder the flat [b * beams, ...] model state so row (i, j) continues beam parents[i, j].

    Leaves that `beam_invariant` marks are kept once per row ([b, ...], see
    `beam_search`): there is nothing to reorder.
    """
    def gather(path, leaf):
        if _kept_per_row(path, leaf, beam_invariant):
            return leaf
        beams = leaf.reshape((batch_size, num_beams) + leaf.shape[1:])
        return _gather_beams(beams, parents).reshape(leaf.shape)
    return jax.tree_util.tree_map_with_path(gather, state)


def beam_search(
    tokens_to_logits: TokensToLogits,
    state: PyTree,
    *,
    batch_size: int,
    num_beams: int,
    max_decode_length: int,
    length_penalty: float | jax.Array = 1.0,
    eos_id: int = 1,
    start_id: int = 0,
    pad_id: int = 0,
    beam_invariant: Callable[[KeyPath], bool] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Beam search; returns (tokens [b, num_beams, L], scores [b, num_beams]), best first.

    `state` is per input row ([b, ...]); it is expanded per beam here. Each step
    keeps the 2 * num_beams best continuations of all beams: EOS-ending ones
    among the top num_beams become finished hypotheses (score = summed log-prob
    / generated_length ** length_penalty), the best num_beams non-EOS ones keep
    running. At `max_decode_length` the running beams are finished as they are.
    A row stops improving (HF `early_stopping=False`) once it holds num_beams
    finished hypotheses that all score at least the best running beam's
    log-prob / current_length ** length_penalty; the loop ends when no row
    can improve. Tokens after EOS are `pad_id`. `length_penalty` may be a
    traced scalar (one compiled search serves every value).

    `beam_invariant(key_path) -> bool` (optional) names state leaves that stay
    equal across the beams of a row (encoder outputs, cross-attention cache):
    they are kept once per row, neither repeated per beam nor reordered, so
    `tokens_to_logits` gets them with b rows while the other leaves (and the
    tokens) have b * num_beams, the beams of row i at rows i * num_beams ...
    (i + 1) * num_beams - 1. Marking a leaf that does differ between beams
    gives wrong results.
    """
    if num_beams < 1 or max_decode_length < 1:
        raise ValueError(f"need num_beams >= 1 and max_decode_length >= 1, got {num_beams}, {max_decode_length}")
    b, k, length = batch_size, num_beams, max_decode_length
    candidates = 2 * k
    is_top_k = jnp.arange(candidates) < k

    def cond(carry):
        return (carry["step"] < length) & jnp.any(carry["improvable"])

    def body(carry):
        step = carry["step"]
        last = carry["running_tokens"].reshape(b * k, 1)
        logits, model_state = tokens_to_logits(last, carry["model_state"])
        vocab = logits.shape[-1]
        # The 2k best continuations over all beams: enough for k to keep running
        # even when k of them end in EOS.
        top_scores, top_flat = top_continuations(
            logits.astype(jnp.float32).reshape(b, k, vocab), carry["running_scores"], candidates)
        parents, top_tokens = top_flat // vocab, (top_flat % vocab).astype(jnp.int32)
        top_seqs = _gather_beams(carry["running_seqs"], parents)
        top_seqs = jax.lax.dynamic_update_slice(top_seqs, top_tokens[:, :, None], (0, 0, step))
        ends = (top_tokens == eos_id) | (step + 1 >= length)

        # Running beams for the next step: the best k continuations that did not end.
        running_scores, keep = jax.lax.top_k(top_scores + ends * _LARGE_NEGATIVE, k)
        running_seqs = _gather_beams(top_seqs, keep)
        running_tokens = jnp.take_along_axis(top_tokens, keep, axis=1)
        model_state = _gather_state(model_state, jnp.take_along_axis(parents, keep, axis=1), b, k, beam_invariant)

        # Finished hypotheses: merge the newly ended (among the top k) with the old ones.
        just_finished = ends & is_top_k[None, :]
        normalized = top_scores / ((step + 1).astype(jnp.float32) ** length_penalty)
        normalized = normalized + (~carry["improvable"])[:, None] * _LARGE_NEGATIVE
        normalized = normalized + (~just_finished) * _LARGE_NEGATIVE
        merged_scores = jnp.concatenate([carry["finished_scores"], normalized], axis=1)
        finished_scores, best = jax.lax.top_k(merged_scores, k)
        finished_seqs = _gather_beams(jnp.concatenate([carry["finished_seqs"], top_seqs], axis=1), best)
        finished_flags = jnp.take_along_axis(
            jnp.concatenate([carry["finished_flags"], just_finished], axis=1), best, axis=1)

        # Can the best running beam still beat the worst finished hypothesis?
        step = step + 1
        best_possible = running_scores[:, :1] / (step.astype(jnp.float32) ** length_penalty)
        worst_finished = jnp.where(
            finished_flags, jnp.min(finished_scores, axis=1, keepdims=True), _LARGE_NEGATIVE)
        improvable = carry["improvable"] & jnp.any(best_possible > worst_finished, axis=1)

        return dict(
            step=step, running_seqs=running_seqs, running_scores=running_scores,
            running_tokens=running_tokens, finished_seqs=finished_seqs,
            finished_scores=finished_scores, finished_flags=finished_flags,
            improvable=improvable, model_state=model_state,
        )

    carry = dict(
        step=jnp.int32(0),
        running_seqs=jnp.full((b, k, length), pad_id, jnp.int32),
        # Only beam 0 is live at the start, so the k beams do not pick the same tokens.
        running_scores=jnp.tile(jnp.array([0.0] + [_LARGE_NEGATIVE] * (k - 1), jnp.float32), (b, 1)),
        running_tokens=jnp.full((b, k), start_id, jnp.int32),
        finished_seqs=jnp.full((b, k, length), pad_id, jnp.int32),
        finished_scores=jnp.full((b, k), _LARGE_NEGATIVE, jnp.float32),
        finished_flags=jnp.zeros((b, k), jnp.bool_),
        improvable=jnp.ones((b,), jnp.bool_),
        model_state=expand_to_beams(state, k, beam_invariant),
    )
    final = jax.lax.while_loop(cond, body, carry)
    return final["finished_seqs"], final["finished_scores"]
