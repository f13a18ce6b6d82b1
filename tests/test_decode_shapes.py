"""`distill.predict.batch_shapes`: the batch shapes `decode_ids` compiles, and that they change no prediction."""
from __future__ import annotations

import collections

import runs_helpers as h
from distill import predict
from distill.predict import MIN_BATCHES_PER_WIDTH, batch_shapes


def test_a_width_few_batches_need_moves_up_and_the_last_batch_fills_its_rows():
    # SVAMP's 1,000 lines with the tiny-t5 tokenizer: one batch needs 32 columns, 28 need 64, the
    # longest 72 need 128 (two full batches and the last 8).
    lengths = [20] * 32 + [50] * (28 * 32) + [100] * 72
    assert collections.Counter(batch_shapes(lengths, 32, 256)) == {(32, 64): 29, (32, 128): 3}


def test_widths_enough_batches_need_keep_their_own_program():
    lengths = [20] * (MIN_BATCHES_PER_WIDTH * 8) + [50] * 16
    assert batch_shapes(lengths, 8, 512) == [(8, 32)] * MIN_BATCHES_PER_WIDTH + [(8, 64)] * 2


def test_a_width_never_moves_to_more_than_twice_its_own():
    assert batch_shapes([5, 5, 5, 300, 300], 1, 512) == [(1, 8)] * 3 + [(1, 512)] * 2
    # Moved groups move on together only while the widest is within 2x of each of them.
    assert batch_shapes([5, 12, 20], 1, 512) == [(1, 16), (1, 16), (1, 32)]


def test_a_short_last_batch_keeps_its_rows_when_no_full_batch_shares_its_width():
    assert batch_shapes([3], 32, 512) == [(1, 8)]
    assert batch_shapes([5] * 64 + [20], 32, 512) == [(32, 8), (32, 8), (1, 32)]
    assert batch_shapes([5] * 40, 32, 512) == [(32, 8), (32, 8)]
    assert batch_shapes([300] * 3, 32, 256) == [(4, 256)]  # capped at max_input_length


def test_without_merging_every_batch_keeps_its_own_shape():
    lengths = [20] * 32 + [50] * (28 * 32) + [100] * 72
    assert collections.Counter(batch_shapes(lengths, 32, 256, merge=False)) == {
        (32, 32): 1, (32, 64): 28, (32, 128): 2, (8, 128): 1}
    assert batch_shapes([5] * 64 + [20], 32, 512, merge=False) == [(32, 8), (32, 8), (1, 32)]


def test_decode_ids_compiles_the_planned_shapes_and_predicts_what_one_input_at_a_time_does(monkeypatch):
    import jax
    import numpy as np
    from flax import linen as nn

    from distill.models.t5 import init_params

    config = h.micro_config(vocab_size=512)
    params = nn.unbox(init_params(config, jax.random.PRNGKey(3), encoder_length=8, decoder_length=8))["params"]
    rng = np.random.default_rng(0)
    # Lengths with EOS: 5 (one batch of 8 columns, moved to 16), 11 (four batches of 16), 17-19 (the last, 3 rows).
    inputs = [list(rng.integers(3, 512, n)) for n in [4] * 4 + [10] * 16 + [16, 17, 18]]
    shapes = []
    real = predict.predict_batch

    def recording(config, params, batch, **options):
        shapes.append(batch.shape)
        return real(config, params, batch, **options)

    monkeypatch.setattr(predict, "predict_batch", recording)
    together = predict.decode_ids(config, params, _IdsVocabulary(), inputs, batch_size=4, max_decode_length=5)
    assert shapes == [(4, 16)] * 5 + [(4, 32)]
    alone = [predict.decode_ids(config, params, _IdsVocabulary(), [ids], batch_size=4, max_decode_length=5)[0]
             for ids in inputs]
    assert together == alone
    shapes.clear()
    assert predict.decode_ids(config, params, _IdsVocabulary(), inputs, batch_size=4, max_decode_length=5,
                              merge_shapes=False) == alone
    assert shapes == [(4, 8)] + [(4, 16)] * 4 + [(4, 32)]


class _IdsVocabulary:
    """Decodes ids to their numbers: the predictions show exactly which tokens came out."""

    vocab_size = 512

    def decode(self, ids):
        return " ".join(map(str, ids))
