"""distill.predict on imported weights == Hugging Face `generate` on the same random T5.

The model is the tiny T5 v1.1 of tests/model_helpers.py (gated-GELU, separate
lm_head, 3 encoder / 2 decoder layers, 8 relative buckets) with its EOS logit
row scaled up, so that in a padded batch of 8 some rows stop early (at different
steps, and differently under greedy and each length penalty) and others run to
the length limit: both the EOS bookkeeping and beam search's finishing rule are
compared, token for token.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from model_helpers import VOCAB_SIZE, hf_t5_model  # noqa: E402

from distill.models.hf_checkpoints import load_hf_checkpoint  # noqa: E402
from distill.predict import predict_batch  # noqa: E402

EOS = 1
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(hf torch model, our config, our params) holding the same weights."""
    hf = hf_t5_model("t5_1_1", seed=0)
    with torch.no_grad():
        hf.lm_head.weight[EOS] *= 3.0
    directory = tmp_path_factory.mktemp("hf_t5")
    hf.save_pretrained(str(directory))
    config, params = load_hf_checkpoint(str(directory))
    return hf, config, params


@pytest.fixture(scope="module")
def inputs():
    """A padded batch [8, 12]: rows of 4..12 tokens ending in EOS, then 0s."""
    rng = np.random.default_rng(0)
    ids = np.zeros((8, 12), np.int32)
    for row in range(8):
        n = int(rng.integers(4, 13))
        ids[row, : n - 1] = rng.integers(3, VOCAB_SIZE, n - 1)
        ids[row, n - 1] = EOS
    return ids


def _hf_generate(hf, ids, **kwargs) -> list[list[int]]:
    with torch.inference_mode():
        out = hf.generate(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(ids != 0).long(),
                          do_sample=False, max_new_tokens=NEW_TOKENS, **kwargs)
    return [_until_eos(row[1:]) for row in out.numpy()]  # drop the decoder start token


def _until_eos(row) -> list[int]:
    row = list(map(int, row))
    return row[: row.index(EOS) + 1] if EOS in row else row


def _ours(config, params, ids, **kwargs) -> tuple[list[list[int]], np.ndarray]:
    tokens = np.asarray(predict_batch(config, params, ids, max_decode_length=NEW_TOKENS, **kwargs))
    return [_until_eos(row) for row in tokens], tokens


def test_greedy_matches_hf_generate_token_for_token(models, inputs):
    hf, config, params = models
    expected = _hf_generate(hf, inputs, num_beams=1)
    ours, raw = _ours(config, params, inputs, method="greedy")
    assert ours == expected
    lengths = [len(row) for row in ours]
    assert min(lengths) < NEW_TOKENS and max(lengths) == NEW_TOKENS, "the batch mixes early EOS and full length"
    for row, n in zip(raw, lengths):
        assert (row[n:] == 0).all(), "positions after EOS are padding"


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_beam_search_matches_hf_top_beam(models, inputs, length_penalty):
    hf, config, params = models
    expected = _hf_generate(hf, inputs, num_beams=4, length_penalty=length_penalty)
    ours, _ = _ours(config, params, inputs, method="beam", num_beams=4, length_penalty=length_penalty)
    assert ours == expected
    greedy, _ = _ours(config, params, inputs, method="greedy")
    assert ours != greedy, "beam search should find something greedy does not on this model"


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_decoding_params_store_product_weights_in_bfloat16_and_decode_the_same(models, inputs, method):
    """decoding_params casts once what a bf16 decode would cast each call: the same tokens."""
    from distill.predict import decoding_params

    _, config, params = models
    same = jax.tree.map(lambda a, b: a is b, decoding_params(config, params), params)
    assert all(jax.tree.leaves(same))  # float32 products: nothing to cast
    config = config.replace(matmul_dtype="bfloat16")
    stored = decoding_params(config, params)
    dtypes = {jax.tree_util.keystr(path): leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(stored)}
    assert dtypes["['decoder']['logits_dense']"] == jnp.bfloat16
    assert dtypes["['encoder']['layers_0']['mlp']['wi_0']"] == jnp.bfloat16
    assert dtypes["['decoder']['layers_0']['encoder_decoder_attention']['key']"] == jnp.bfloat16
    assert dtypes["['token_embedder']['embedding']"] == jnp.float32  # looked up, not multiplied
    assert dtypes["['encoder']['relpos_bias']['rel_embedding']"] == jnp.float32
    assert dtypes["['decoder']['decoder_norm']['scale']"] == jnp.float32
    kwargs = dict(method=method, num_beams=3) if method == "beam" else {}
    _, cast_each_call = _ours(config, params, inputs, **kwargs)
    _, cast_once = _ours(config, stored, inputs, **kwargs)
    np.testing.assert_array_equal(cast_once, cast_each_call)


@pytest.mark.parametrize("matmul_dtype", ["", "bfloat16"])
def test_beam_rows_sharing_encoder_keys_search_as_beams_with_their_own_copies(models, inputs, matmul_dtype):
    """predict's beam search keeps the encoder keys/values once per row (the beams are the cross-attention's
    queries); expanding every state leaf per beam instead (no beam_invariant) finds the same beams."""
    from distill import decoding
    from distill.models.t5 import T5
    from distill.predict import beam_invariant, decoding_params, make_tokens_to_logits

    _, config, params = models
    config = config.replace(matmul_dtype=matmul_dtype)
    params = decoding_params(config, params)
    ids = jnp.asarray(inputs)

    def search(invariant):
        encoded = T5(config).apply({"params": params}, ids, method=T5.encode)
        step, state = make_tokens_to_logits(config, params, encoded, ids, max_decode_length=NEW_TOKENS)
        return decoding.beam_search(step, state, batch_size=ids.shape[0], num_beams=4, max_decode_length=NEW_TOKENS,
                                    beam_invariant=invariant)

    shared_tokens, shared_scores = jax.jit(lambda: search(beam_invariant))()
    copied_tokens, copied_scores = jax.jit(lambda: search(None))()
    np.testing.assert_array_equal(shared_tokens, copied_tokens)
    np.testing.assert_allclose(shared_scores, copied_scores, rtol=1e-5, atol=1e-5)
