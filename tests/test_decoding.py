"""Decoders on hand-written logits (no model): Markov chains over a 6-token vocabulary.

Token ids follow T5: 0 = pad = decoder start, 1 = EOS. A chain's `tokens_to_logits`
returns log P[next | last] from a table, plus an optional per-row bias carried in the
state (so the state plumbing, including the per-beam expansion and reordering, is
exercised and a wrong gather changes the answer).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import decoding, losses
from distill.argmax import argmax_last_axis

EOS, PAD = 1, 0
VOCAB = 6


def _table(rows: dict[int, dict[int, float]]) -> np.ndarray:
    """log P[next | last] with the given probabilities and 1e-6 for everything else."""
    probs = np.full((VOCAB, VOCAB), 1e-6)
    for last, nexts in rows.items():
        for token, p in nexts.items():
            probs[last, token] = p
    probs /= probs.sum(axis=1, keepdims=True)
    return np.log(probs).astype(np.float32)


def _markov(table: np.ndarray):
    """A first-order chain: logits = table[last token] + state["bias"] (per row)."""
    table = jnp.asarray(table)

    def tokens_to_logits(tokens, state):
        return table[tokens[:, 0]] + state["bias"], {**state, "steps": state["steps"] + 1}

    return tokens_to_logits


def _state(batch: int, bias: np.ndarray | None = None):
    bias = np.zeros((batch, VOCAB), np.float32) if bias is None else bias
    return {"bias": jnp.asarray(bias), "steps": jnp.zeros((batch,), jnp.int32), "shared": jnp.float32(0)}


# start -> 2 (0.55) | 3 (0.45); 2 -> 4 (0.34) | 5 | EOS (0.33 each); 3 -> EOS (0.95); 4, 5 -> EOS.
# Greedy follows 2 4 EOS (p = 0.187); the best sequence is 3 EOS (p = 0.43).
GREEDY_MISSES = _table({0: {2: 0.55, 3: 0.45}, 2: {4: 0.34, 5: 0.33, EOS: 0.33}, 3: {EOS: 0.95, 2: 0.05},
                        4: {EOS: 1.0}, 5: {EOS: 1.0}})
# "2 EOS" has p = 0.54 (length 2); "3 4 5 EOS" has p = 0.34 (length 4): the length penalty decides.
LENGTH_MATTERS = _table({0: {2: 0.6, 3: 0.4}, 2: {EOS: 0.9, 4: 0.1}, 3: {4: 0.95, 2: 0.05},
                         4: {5: 0.95, EOS: 0.05}, 5: {EOS: 0.95, 2: 0.05}})
# A chain that never emits EOS: 2 -> 3 -> 4 -> 5 -> 2 ...
NEVER_ENDS = _table({0: {2: 1.0}, 2: {3: 1.0}, 3: {4: 1.0}, 4: {5: 1.0}, 5: {2: 1.0}})


# Compiled decoders are cached per (table, shapes) so tests that differ only in data or
# length penalty (a traced argument) share one compilation.
@functools.lru_cache(maxsize=None)
def _compiled(kind, table_bytes, batch, length, num_beams=0):
    step = _markov(np.frombuffer(table_bytes, np.float32).reshape(VOCAB, VOCAB))
    if kind == "greedy":
        return jax.jit(lambda state: decoding.greedy_decode(step, state, batch_size=batch, max_decode_length=length))
    return jax.jit(lambda state, penalty: decoding.beam_search(
        step, state, batch_size=batch, num_beams=num_beams, max_decode_length=length, length_penalty=penalty))


def _greedy(table, state, length):
    return np.asarray(_compiled("greedy", table.tobytes(), state["bias"].shape[0], length)(state))


def _beams(table, state, length, num_beams=4, length_penalty=1.0):
    fn = _compiled("beam", table.tobytes(), state["bias"].shape[0], length, num_beams)
    tokens, scores = fn(state, jnp.float32(length_penalty))
    return np.asarray(tokens), np.asarray(scores)


def _sequence_log_prob(table, bias_row, tokens):
    """Teacher-forced sum of log-softmax(table[last] + bias) over tokens up to and including EOS."""
    total, last = 0.0, 0
    for token in tokens:
        logits = table[last] + bias_row
        total += float(jax.nn.log_softmax(logits)[token])
        if token == EOS:
            break
        last = token
    return total


def _length(tokens):
    hits = np.flatnonzero(tokens == EOS)
    return int(hits[0]) + 1 if hits.size else len(tokens)


# ----------------------------------------------------------------------------- greedy


def test_argmax_last_axis_is_jnp_argmax_with_ties_to_the_first_index():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 257))
    np.testing.assert_array_equal(argmax_last_axis(logits), jnp.argmax(logits, axis=-1))
    ties = jnp.zeros((2, 9)).at[0, 4].set(1.0).at[0, 7].set(1.0).at[1, 8].set(-1.0)
    np.testing.assert_array_equal(argmax_last_axis(ties), [4, 0])
    broken = jnp.full((1, 5), jnp.nan)
    assert 0 <= int(argmax_last_axis(broken)[0]) < 5  # an index the embedding can take


@pytest.mark.parametrize("rows, beams, vocab, count", [(3, 4, 1000, 8), (2, 3, 70001, 6), (2, 2, 50, 4), (1, 1, 5000, 2)])
def test_top_continuations_is_top_k_of_the_normalized_totals(rows, beams, vocab, count):
    logits = jax.random.normal(jax.random.PRNGKey(vocab), (rows, beams, vocab)) * 4
    scores = jax.random.normal(jax.random.PRNGKey(1), (rows, beams)) * 3
    totals = (losses.log_softmax(logits) + scores[..., None]).reshape(rows, beams * vocab)
    want = jax.lax.top_k(totals, count)
    for got, expected in zip(decoding.top_continuations(logits, scores, count, chunk=16), want, strict=True):
        np.testing.assert_array_equal(got, expected)  # bit for bit
    compiled = jax.jit(functools.partial(decoding.top_continuations, count=count, chunk=16))(logits, scores)
    np.testing.assert_array_equal(compiled[1], want[1])
    np.testing.assert_allclose(compiled[0], want[0], rtol=1e-6)


def test_top_continuations_breaks_ties_to_the_lowest_beam_and_token():
    # Equal totals across beams and within one: the lowest flat index (beam * vocab + token) first.
    logits = jnp.zeros((2, 3, 600)).at[0, 2, 599].set(9.0).at[0, 1, 17].set(5.0).at[0, 0, 300].set(5.0)
    values, flat = decoding.top_continuations(logits, jnp.zeros((2, 3)), 4, chunk=16)
    np.testing.assert_array_equal(flat[0, :3], [2 * 600 + 599, 300, 600 + 17])
    np.testing.assert_array_equal(flat[1], np.arange(4))
    assert values[0, 1] == values[0, 2]


def test_greedy_follows_argmax_and_pads_after_eos():
    tokens = _greedy(GREEDY_MISSES, _state(1), length=6)
    np.testing.assert_array_equal(tokens, [[2, 4, EOS, PAD, PAD, PAD]])


def test_greedy_rows_stop_independently_and_respect_max_length():
    # Row 1's bias forces token 3 first (then EOS); row 2's chain never ends.
    bias = np.zeros((3, VOCAB), np.float32)
    bias[1, 3] = 5.0
    bias[1, 2] = -5.0
    tokens = _greedy(GREEDY_MISSES, _state(3, bias), length=5)
    np.testing.assert_array_equal(tokens[0], [2, 4, EOS, PAD, PAD])
    np.testing.assert_array_equal(tokens[1], [3, EOS, PAD, PAD, PAD])
    forever = _greedy(NEVER_ENDS, _state(2), length=7)
    np.testing.assert_array_equal(forever, [[2, 3, 4, 5, 2, 3, 4]] * 2)


def test_greedy_keeps_padding_after_eos_even_if_the_model_continues():
    # After EOS this chain would emit 3 forever; the decoder must write pad instead.
    table = _table({0: {EOS: 0.9, 3: 0.1}, EOS: {3: 1.0}, 3: {3: 1.0}})
    bias = np.zeros((2, VOCAB), np.float32)
    bias[1, EOS] = -20.0  # row 1 never ends: 3 3 3 ...
    tokens = _greedy(table, _state(2, bias), length=4)
    np.testing.assert_array_equal(tokens, [[EOS, PAD, PAD, PAD], [3, 3, 3, 3]])


# ----------------------------------------------------------------------------- filters


def test_top_k_filter_keeps_the_k_largest():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    filtered = np.asarray(decoding.top_k_filter(logits, 2))
    np.testing.assert_array_equal(np.isfinite(filtered), [[False, False, True, True], [True, True, False, False]])
    np.testing.assert_allclose(filtered[0, 2:], np.log([0.3, 0.4]), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(decoding.top_k_filter(logits, 0)), np.asarray(logits))


@pytest.mark.parametrize("top_p, kept", [(0.35, [3]), (0.65, [2, 3]), (0.75, [1, 2, 3]), (0.95, [0, 1, 2, 3])])
def test_top_p_filter_keeps_the_smallest_nucleus(top_p, kept):
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    filtered = np.asarray(decoding.top_p_filter(logits, top_p))
    assert sorted(np.flatnonzero(np.isfinite(filtered[0])).tolist()) == kept


def test_top_p_filter_always_keeps_the_most_likely_token():
    logits = jnp.log(jnp.array([[0.05, 0.9, 0.05]]))
    assert np.flatnonzero(np.isfinite(np.asarray(decoding.top_p_filter(logits, 0.01)))).tolist() == [1]


# ----------------------------------------------------------------------------- sampling

FOUR_WAY = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))


@functools.lru_cache(maxsize=None)
def _sampler(settings: tuple):
    def tokens_to_logits(tokens, state):
        return jnp.broadcast_to(FOUR_WAY, (tokens.shape[0], 4)), state

    return jax.jit(lambda r: decoding.sample_decode(tokens_to_logits, {}, batch_size=4000, max_decode_length=1,
                                                    rng=r, **dict(settings)))


def _sample(rng, **kwargs):
    """4000 one-token draws from FOUR_WAY with the given filters."""
    return np.asarray(_sampler(tuple(sorted(kwargs.items())))(rng))[:, 0]


def test_sampling_matches_the_distribution_and_is_deterministic_per_rng():
    first = _sample(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(first, _sample(jax.random.PRNGKey(0)))
    assert not np.array_equal(first, _sample(jax.random.PRNGKey(1)))
    frequencies = np.bincount(first, minlength=4) / first.size
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4], atol=0.03)


def test_sampling_applies_temperature_top_k_and_top_p():
    rng = jax.random.PRNGKey(3)
    assert set(_sample(rng, top_k=2).tolist()) == {2, 3}
    assert set(_sample(rng, top_p=0.65).tolist()) == {2, 3}
    # A low temperature sharpens towards the mode; a high one flattens.
    cold = np.bincount(_sample(rng, temperature=0.25), minlength=4) / 4000
    hot = np.bincount(_sample(rng, temperature=4.0), minlength=4) / 4000
    assert cold[3] > 0.6 and hot[3] < 0.33


def test_sampling_stops_at_eos_and_rejects_bad_settings():
    fn = jax.jit(lambda r: decoding.sample_decode(_markov(GREEDY_MISSES), _state(8), batch_size=8,
                                                  max_decode_length=6, rng=r))
    tokens = np.asarray(fn(jax.random.PRNGKey(0)))
    for row in tokens:
        end = _length(row)
        assert row[end - 1] == EOS and (row[end:] == PAD).all()
    with pytest.raises(ValueError, match="temperature"):
        decoding.sample_decode(_markov(GREEDY_MISSES), _state(1), batch_size=1, max_decode_length=2,
                               rng=jax.random.PRNGKey(0), temperature=0.0)


# ----------------------------------------------------------------------------- beam search


def test_beam_search_finds_the_sequence_greedy_misses():
    tokens, scores = _beams(GREEDY_MISSES, _state(1), length=6)
    np.testing.assert_array_equal(tokens[0, 0], [3, EOS, PAD, PAD, PAD, PAD])
    np.testing.assert_allclose(scores[0, 0], np.log(0.45 * 0.95) / 2, rtol=1e-4)
    assert (np.diff(scores[0]) <= 0).all(), "beams are returned best first"


@pytest.mark.parametrize("length_penalty, winner", [(1.0, [3, 4, 5, EOS]), (0.0, [2, EOS]), (2.0, [3, 4, 5, EOS])])
def test_length_penalty_changes_the_winner(length_penalty, winner):
    tokens, scores = _beams(LENGTH_MATTERS, _state(1), length=6, length_penalty=length_penalty)
    np.testing.assert_array_equal(tokens[0, 0, :len(winner)], winner)
    assert (tokens[0, 0, len(winner):] == PAD).all()
    expected = _sequence_log_prob(LENGTH_MATTERS, np.zeros(VOCAB), winner) / len(winner) ** length_penalty
    np.testing.assert_allclose(scores[0, 0], expected, rtol=1e-4)


def test_beam_scores_equal_teacher_forced_log_probs_per_row():
    # Random chain with per-row biases: every returned beam's score must be its own
    # teacher-forced log-prob / length**penalty, so a mis-ordered state would show.
    rng = np.random.default_rng(0)
    table = rng.normal(0, 2, (VOCAB, VOCAB)).astype(np.float32)
    bias = rng.normal(0, 2, (3, VOCAB)).astype(np.float32)
    tokens, scores = _beams(table, _state(3, bias), length=5, num_beams=3, length_penalty=0.6)
    for row in range(3):
        seen = set()
        for beam in range(3):
            seq = tokens[row, beam]
            n = _length(seq)
            expected = _sequence_log_prob(table, bias[row], seq[:n]) / n ** 0.6
            np.testing.assert_allclose(scores[row, beam], expected, rtol=1e-4, atol=1e-5)
            assert (seq[n:] == PAD).all()
            seen.add(tuple(seq))
        assert len(seen) == 3, "beams are distinct hypotheses"
    # Batching does not change a row's answer.
    single, single_scores = _beams(table, _state(1, bias[1:2]), length=5, num_beams=3, length_penalty=0.6)
    np.testing.assert_array_equal(single[0], tokens[1])
    np.testing.assert_allclose(single_scores[0], scores[1], rtol=1e-5)


def test_beam_search_finishes_running_beams_at_max_length():
    tokens, scores = _beams(NEVER_ENDS, _state(2), length=3, num_beams=2)
    np.testing.assert_array_equal(tokens[:, 0], [[2, 3, 4]] * 2)
    assert np.isfinite(scores).all() and (scores > -1e8).all()


def test_expand_to_beams_repeats_rows_and_shares_scalars():
    state = {"x": jnp.arange(6).reshape(2, 3), "index": jnp.int32(7)}
    expanded = decoding.expand_to_beams(state, 2)
    np.testing.assert_array_equal(expanded["x"], [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
    assert expanded["index"].shape == () and int(expanded["index"]) == 7


def test_expand_to_beams_keeps_beam_invariant_leaves_per_row():
    state = {"x": jnp.arange(6).reshape(2, 3), "shared": jnp.arange(4).reshape(2, 2)}
    expanded = decoding.expand_to_beams(state, 3, lambda path: path[0].key == "shared")
    assert expanded["x"].shape == (6, 3)
    np.testing.assert_array_equal(expanded["shared"], [[0, 1], [2, 3]])
