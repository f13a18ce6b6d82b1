"""The Flax T5 network: parity with transformers' PyTorch T5, cached decoding, packing, axes, gin sizes."""
import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from distill.errors import UserError
from distill.models.layers import (Dropout, add_position_bias, attention_product, contract_leading, dense, hashed_bits,
                                   relative_position_buckets)
from distill.models.t5 import T5, T5Config, abstract_params, init_cache, init_params
from model_helpers import VARIANTS, padded_batch, save_hf_t5

LOGICAL_AXES = {"embed", "mlp", "heads", "kv", "joined_kv", "vocab", "relpos_buckets"}


def tiny_config(variant: str = "t5_1_1", **changes) -> T5Config:
    """A T5Config with the shapes of model_helpers' HF variants (no torch needed)."""
    spec = VARIANTS[variant]
    config = T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4,
        num_encoder_layers=spec["num_layers"], num_decoder_layers=spec["num_decoder_layers"],
        relative_attention_num_buckets=spec["relative_attention_num_buckets"],
        relative_attention_max_distance=spec["relative_attention_max_distance"],
        feed_forward_proj=spec["feed_forward_proj"], tie_word_embeddings=spec["tie_word_embeddings"],
        dropout_rate=0.0,
    )
    return config.replace(**changes)


def rng(seed: int) -> jax.Array:
    """A cheap-to-compile PRNG key: threefry init dominates CPU compile time of tiny models."""
    return jax.random.key(seed, impl="unsafe_rbg")


def random_params(config: T5Config, seed: int = 0) -> dict:
    """Random params for config's shapes (cached across configs that differ only in run settings)."""
    return _random_params(config.replace(dropout_rate=0.0, dtype="float32", remat_policy="none"), seed)


@functools.lru_cache(maxsize=None)
def _random_params(config: T5Config, seed: int) -> dict:
    return nn.unbox(init_params(config, rng(seed), encoder_length=4, decoder_length=4))["params"]


@functools.lru_cache(maxsize=None)
def forward(config: T5Config, enable_dropout: bool = False):
    """Jitted teacher-forced logits (params, encoder tokens, decoder tokens, rng, segment ids...)."""
    def logits(params, encoder_tokens, decoder_tokens, rng=None, encoder_segment_ids=None,
               decoder_segment_ids=None):
        return T5(config).apply({"params": params}, encoder_tokens, decoder_tokens,
                                encoder_segment_ids=encoder_segment_ids, decoder_segment_ids=decoder_segment_ids,
                                enable_dropout=enable_dropout, rngs=None if rng is None else {"dropout": rng})
    return jax.jit(logits)


@functools.lru_cache(maxsize=None)
def encode(config: T5Config):
    return jax.jit(lambda params, tokens: T5(config).apply({"params": params}, tokens, method=T5.encode))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_pair(request, tmp_path_factory):
    """(variant, torch model, imported T5Config, imported params) for each architecture."""
    from distill.models.hf_checkpoints import load_hf_checkpoint

    directory = tmp_path_factory.mktemp(f"hf_{request.param}")
    model = save_hf_t5(directory, request.param, seed=1)
    config, params = load_hf_checkpoint(directory)
    return request.param, model, config, params


def _torch_forward(model, batch, labels=None):
    import torch

    inputs = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
    kwargs = {"labels": torch.tensor(labels, dtype=torch.long)} if labels is not None else {
        "decoder_input_ids": torch.tensor(batch["decoder_input_tokens"], dtype=torch.long)}
    with torch.no_grad():
        return model(input_ids=inputs, attention_mask=(inputs != 0).long(), **kwargs)


def test_encoder_outputs_and_logits_match_pytorch(hf_pair):
    variant, model, config, params = hf_pair
    assert config.tie_word_embeddings == VARIANTS[variant]["tie_word_embeddings"]
    batch = padded_batch(seed=3)
    expected = _torch_forward(model, batch)
    encoded = encode(config)(params, batch["encoder_input_tokens"])
    logits = forward(config)(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    assert logits.dtype == jnp.float32 and logits.shape == (3, 8, config.vocab_size)
    np.testing.assert_allclose(encoded, expected.encoder_last_hidden_state.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4, rtol=1e-4)


def test_masked_token_loss_matches_pytorch_loss(hf_pair):
    _, model, config, params = hf_pair
    batch = padded_batch(seed=4)
    labels = np.where(batch["decoder_loss_weights"] > 0, batch["decoder_target_tokens"], -100)
    expected = float(_torch_forward(model, batch, labels=labels).loss)
    logits = forward(config)(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    token_loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["decoder_target_tokens"][..., None], -1)[..., 0]
    weights = batch["decoder_loss_weights"]
    loss = float((token_loss * weights).sum() / weights.sum())
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance", [(True, 32, 128), (False, 32, 128),
                                                                      (True, 12, 40), (False, 8, 24)])
def test_relative_position_buckets_match_pytorch(bidirectional, num_buckets, max_distance):
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(300)[None, :] - torch.arange(300)[:, None]
    expected = T5Attention._relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance).numpy()
    got = relative_position_buckets(300, 300, bidirectional=bidirectional, num_buckets=num_buckets,
                                    max_distance=max_distance)
    np.testing.assert_array_equal(got, expected)
    assert got.max() == num_buckets - 1  # Distances past max_distance share the last bucket.


def _decode_token_by_token(config: T5Config):
    """(teacher-forced logits, init_cache's cache, the logits decoded from it one token at a time, the last cache)."""
    params = random_params(config, seed=2)
    batch = padded_batch(seed=5)
    model = T5(config)
    full = forward(config)(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    encoded = encode(config)(params, batch["encoder_input_tokens"])
    first = init_cache(config, params, encoded, batch["encoder_input_tokens"], max_decode_length=8)
    step = jax.jit(lambda cache, tokens: model.apply(
        {"params": params, "cache": cache}, encoded, batch["encoder_input_tokens"], tokens, decode=True,
        mutable=["cache"], method=T5.decode))
    cache, steps = first, []
    for position in range(8):
        logits, variables = step(cache, batch["decoder_input_tokens"][:, position:position + 1])
        cache = variables["cache"]
        steps.append(logits)
    return full, first, np.concatenate(steps, axis=1), cache


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_decoding_matches_teacher_forcing(variant):
    full, cache, decoded, last = _decode_token_by_token(tiny_config(variant))
    assert int(cache["decoder"]["cache_index"]) == 0
    layer = cache["decoder"]["layers_0"]
    assert layer["self_attention"]["cached_key"].shape == (3, 4, 8, 8)  # [b, heads, len, d_kv]
    assert not np.any(layer["self_attention"]["cached_key"])
    assert layer["encoder_decoder_attention"]["cached_value"].shape == (3, 4, 9, 8)  # projected once, up front
    assert np.any(layer["encoder_decoder_attention"]["cached_value"])
    assert int(last["decoder"]["cache_index"]) == 8
    np.testing.assert_allclose(decoded, full, atol=1e-5, rtol=1e-5)


def test_bfloat16_products_decode_from_bfloat16_caches():
    """matmul_dtype bfloat16: the caches hold the bf16 keys/values the products read, same logits as teacher forcing."""
    full, cache, decoded, _ = _decode_token_by_token(tiny_config("t5_1_1").replace(matmul_dtype="bfloat16"))
    paths = jax.tree_util.tree_leaves_with_path(cache)
    assert {leaf.dtype for path, leaf in paths if "cached" in jax.tree_util.keystr(path)} == {jnp.dtype("bfloat16")}
    assert np.abs(decoded - full).max() < 1e-2 * np.abs(full).max()


def test_packed_segments_do_not_attend_across_examples():
    """Two examples packed in one row give the logits each gives alone."""
    config = tiny_config("t5")
    params = random_params(config, seed=3)
    run = forward(config)
    a_in, a_dec = [5, 9, 11, 1], [0, 7, 8]
    b_in, b_dec = [12, 13, 1], [0, 20, 21, 22]

    def row(*parts):  # One [1, 8] row: the parts back to back, then padding.
        tokens = sum(parts, [])
        return np.array([tokens + [0] * (8 - len(tokens))])

    def segments(*parts):
        return row(*[[i + 1] * len(part) for i, part in enumerate(parts)])

    packed = run(params, row(a_in, b_in), row(a_dec, b_dec), None, segments(a_in, b_in), segments(a_dec, b_dec))
    # Alone, each example is its own single segment (same compiled function, same shapes).
    alone_a = run(params, row(a_in), row(a_dec), None, segments(a_in), segments(a_dec))
    alone_b = run(params, row(b_in), row(b_dec), None, segments(b_in), segments(b_dec))
    np.testing.assert_allclose(packed[0, :3], alone_a[0, :3], atol=1e-5)
    np.testing.assert_allclose(packed[0, 3:7], alone_b[0, :4], atol=1e-5)
    # Without segment ids the second example would see the first.
    merged = run(params, row(a_in, b_in), row(a_dec, b_dec), None, segments(a_in + b_in), segments(a_dec + b_dec))
    assert not np.allclose(merged[0, 3:7], alone_b[0, :4], atol=1e-3)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_param_has_logical_axes(variant):
    config = tiny_config(variant)
    boxed = abstract_params(config, encoder_length=5, decoder_length=3)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape) and set(leaf.names) <= LOGICAL_AXES
    specs = nn.get_partition_spec(boxed)["params"]
    assert set(specs) == {"token_embedder", "encoder", "decoder"}
    assert tuple(specs["token_embedder"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["encoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")
    assert tuple(specs["decoder"]["layers_0"]["self_attention"]["query"]) == ("embed", "joined_kv")
    assert tuple(specs["decoder"]["layers_0"]["mlp"]["wo"]) == ("mlp", "embed")
    assert ("logits_dense" in specs["decoder"]) is (not config.tie_word_embeddings)
    assert len([k for k in specs["decoder"] if k.startswith("layers_")]) == config.num_decoder_layers
    real = random_params(config)  # Materialized init has the same tree, shapes and dtypes.
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), nn.unbox(boxed)["params"])
    assert shapes == jax.tree.map(lambda x: (x.shape, x.dtype), real)


def test_dropout_uses_the_dropout_rng_only_when_enabled():
    config = tiny_config("t5_1_1", num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.3)
    params = random_params(config)
    batch = padded_batch()
    args = (params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])

    def run(seed):
        return forward(config, enable_dropout=True)(*args, rng(seed))

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))
    np.testing.assert_array_equal(forward(config)(*args), forward(config)(*args, rng(1)))


@pytest.mark.parametrize("rate, width", [(0.1, 64), (0.5, 33)])
def test_dropout_keeps_one_minus_rate_and_stays_unbiased(rate, width):
    x = jnp.ones((64, 128, width), jnp.float32)
    out = Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    kept = np.asarray(out) != 0
    assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / kept.size)
    # Kept values carry the exact inverse of the quantized keep probability.
    keep_probability = round((1 - rate) * 65536) / 65536
    np.testing.assert_allclose(np.asarray(out)[kept], 1 / keep_probability, rtol=1e-6)
    # Neighbouring elements (two halves of one hashed word) are not correlated.
    pairs = kept.reshape(-1)[: kept.size // 2 * 2].reshape(-1, 2)
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 0.02
    assert Dropout(rate).apply({}, x, deterministic=True) is x


def test_hashed_bits_are_uniform_and_uncorrelated_across_keys_rows_and_transposition():
    shape = (64, 64, 33)
    bits = np.asarray(hashed_bits(jax.random.PRNGKey(0), shape))  # the all-zero key adds nothing
    np.testing.assert_array_equal(bits, np.asarray(hashed_bits(jax.random.PRNGKey(0), shape)))
    assert len(np.unique(bits)) > 0.99 * bits.size
    ones = np.unpackbits(bits.view(np.uint8)).reshape(-1, 32).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 4 * 0.5 / np.sqrt(bits.size))  # every bit position is fair

    def low(b):
        return (b & 1).astype(np.float64).ravel()

    square = bits[:, :, 0]
    above = np.triu_indices(64, 1)
    pairs = {
        "keys": (bits, np.asarray(hashed_bits(jax.random.PRNGKey(1), shape))),
        "rows": (bits[:-1], bits[1:]),
        "neighbours": (bits[..., :-1], bits[..., 1:]),
        "transposed": (square[above], square.T[above]),
        "typed keys": (np.asarray(hashed_bits(jax.random.key(1, impl="unsafe_rbg"), shape)),
                       np.asarray(hashed_bits(jax.random.key(2, impl="unsafe_rbg"), shape))),
    }
    for name, (a, b) in pairs.items():
        assert abs(np.corrcoef(low(a), low(b))[0, 1]) < 4 / np.sqrt(a.size), name
    with pytest.raises(ValueError, match="per leading index"):
        hashed_bits(jax.random.PRNGKey(0), (2, 1 << 16, 1 << 16))


def test_dense_multiplies_in_the_operand_dtype_whatever_the_activations():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 64))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (64, 16))
    exact = np.asarray(x @ kernel)
    low = x.astype(jnp.bfloat16)
    # bfloat16 activations, float32 products: only the rounding of the activations shows.
    wide = dense(low, kernel, operand_dtype=jnp.float32, out_dtype=jnp.float32)
    np.testing.assert_allclose(wide, np.asarray(low.astype(jnp.float32) @ kernel), rtol=1e-5, atol=1e-5)
    # float32 activations, bfloat16 products (T5Config.matmul_dtype): float32 out, bf16-close.
    mixed = dense(x, kernel, operand_dtype=jnp.bfloat16)
    assert mixed.dtype == jnp.float32 and 0 < np.abs(np.asarray(mixed) - exact).max() < 0.5


@pytest.mark.parametrize("spec, x_shape, y_shape", [
    ("ni,no->io", (37, 24), (37, 40)),  # a weight gradient x^T dy
    ("ni,no->io", (37, 40), (37, 24)),  # x wider than dy: the operands swap places
    ("no,ni->oi", (48, 40), (48, 24)),  # a transposed kernel's; 48 rows: a full block of padding
    ("bqhd,bhqk->bkhd", (2, 9, 3, 8), (2, 3, 9, 11)),  # attention's dK
    ("bhqk,bqhd->bkhd", (2, 3, 9, 11), (2, 9, 3, 8)),  # attention's dV (swapped: k is wider than d)
])
def test_contract_leading_is_the_einsum_of_16_bit_operands(spec, x_shape, y_shape):
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape).astype(jnp.bfloat16)
    y = jax.random.normal(jax.random.PRNGKey(1), y_shape).astype(jnp.bfloat16)
    got = jax.jit(functools.partial(contract_leading, spec))(x, y)  # compiled: XLA:CPU once rejected such products
    want = np.einsum(spec, np.asarray(x, np.float32), np.asarray(y, np.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_16_bit_attention_products_track_the_float32_gradients():
    query = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 3, 8))
    key = jax.random.normal(jax.random.PRNGKey(1), (2, 13, 3, 8))
    probe = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 9, 13))

    def loss(dtype, query, key):
        return jnp.sum(jnp.tanh(attention_product("bqhd,bkhd->bhqk", query, key, dtype)) * probe)

    want = jax.jit(jax.grad(functools.partial(loss, jnp.float32), argnums=(0, 1)))(query, key)
    got = jax.jit(jax.grad(functools.partial(loss, jnp.bfloat16), argnums=(0, 1)))(query, key)
    for w, g in zip(want, got):
        assert g.dtype == jnp.float32
        assert 0 < np.linalg.norm(np.asarray(g - w)) / np.linalg.norm(np.asarray(w)) < 2e-2
    with pytest.raises(ValueError, match="one operand only"):
        jax.grad(lambda a: attention_product("bqhd,bkhe->bhqk", a, key[..., :1], jnp.bfloat16).sum())(query)


def test_position_bias_gradient_equals_broadcast_add_gradient():
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 5, 7))
    bias = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 5, 7))
    weights = jax.random.normal(jax.random.PRNGKey(2), logits.shape)

    def loss(add, logits, bias):
        return jnp.sum(jnp.tanh(add(logits, bias)) * weights)

    want = jax.grad(functools.partial(loss, jnp.add), argnums=(0, 1))(logits, bias)
    got = jax.grad(functools.partial(loss, add_position_bias), argnums=(0, 1))(logits, bias)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    config = tiny_config("t5_1_1", num_encoder_layers=1, num_decoder_layers=1)
    params = random_params(config)
    batch = padded_batch()
    reference = forward(config)(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    low = forward(config.replace(dtype="bfloat16"))(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    assert low.dtype == jnp.float32
    assert np.abs(low - reference).max() < 0.05 * np.abs(reference).max()
    bf16_params = nn.unbox(abstract_params(config.replace(param_dtype="bfloat16")))
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_params)} == {jnp.dtype("bfloat16")}


@functools.lru_cache(maxsize=None)
def _loss_and_grads_fn(config: T5Config):
    def fn(params, encoder_tokens, decoder_tokens):
        logits = T5(config).apply({"params": params}, encoder_tokens, decoder_tokens)
        return jnp.mean(jax.nn.logsumexp(logits, -1))
    return jax.jit(jax.value_and_grad(fn))


def _loss_and_grads(config, params, batch):
    return _loss_and_grads_fn(config)(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])


@pytest.mark.parametrize("policy", ["full", "minimal"])
def test_remat_gives_the_same_loss_and_gradients(policy):
    config = tiny_config("t5_1_1", num_encoder_layers=1, num_decoder_layers=1)
    params = random_params(config)
    batch = padded_batch()

    value, grads = _loss_and_grads(config, params, batch)
    value_remat, grads_remat = _loss_and_grads(config.replace(remat_policy=policy), params, batch)
    assert float(value) == pytest.approx(float(value_remat), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, grads_remat)

    def rematerialized(cfg):  # A remat/checkpoint primitive in the jaxpr (named "remat2" in some versions).
        jaxpr = str(jax.make_jaxpr(lambda p: T5(cfg).apply({"params": p}, batch["encoder_input_tokens"],
                                                           batch["decoder_input_tokens"]))(params))
        return "remat" in jaxpr or "checkpoint[" in jaxpr
    assert rematerialized(config.replace(remat_policy=policy)) and not rematerialized(config)


@pytest.mark.parametrize("field,value", [("feed_forward_proj", "swiglu"), ("remat_policy", "some"),
                                         ("dtype", "int8"), ("num_heads", 0)])
def test_config_rejects_unsupported_values_naming_the_field(field, value):
    with pytest.raises(UserError, match=field):
        T5Config(**{field: value})


def test_model_modules_import_without_tensorflow_or_torch():
    code = ("import distill.models.t5, distill.models.hf_checkpoints, sys; "
            "bad = [m for m in ('tensorflow', 'torch', 'transformers', 'seqio') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=pathlib.Path(__file__).parent.parent)


# Reference parameter counts of the public checkpoints (transformers' num_parameters()).
KNOWN_SIZES = {"t5_small.gin": 60_506_624, "t5_1_1_base.gin": 247_577_856, "flan_t5_xxl.gin": 11_135_332_352}


def test_gin_model_files_parse_to_known_shapes(repo_root):
    import gin

    models_dir = repo_root / "gin_configs" / "models"
    files = sorted(p.name for p in models_dir.glob("*.gin"))
    sizes = ("tiny", "small", "base", "large", "xl", "xxl")
    assert {f"t5_1_1_{s}.gin" for s in sizes} | {f"flan_t5_{s}.gin" for s in sizes[1:]} <= set(files)
    assert {"t5.gin", "t5_1_1.gin", "t5_small.gin", "t5_base.gin", "t5_large.gin"} <= set(files)
    try:  # Register locally unless distill.gin_bindings already did in this process.
        configurable = gin.external_configurable(T5Config, name="T5Config")
    except ValueError:
        configurable = gin.get_configurable("T5Config")
    try:
        configs = {}
        for name in files:
            gin.clear_config()
            gin.add_config_file_search_path(str(repo_root / "gin_configs"))
            gin.parse_config_files_and_bindings([f"models/{name}"], [])
            configs[name] = configurable()
            if name not in ("t5.gin", "t5_1_1.gin"):
                text = (models_dir / name).read_text()
                assert "include 'models/" in text and "feed_forward_proj" not in text, name
    finally:
        gin.clear_config()
    tiny = configs["t5_1_1_tiny.gin"]
    assert (tiny.d_model, tiny.d_ff, tiny.d_kv, tiny.num_heads, tiny.num_encoder_layers,
            tiny.num_decoder_layers, tiny.feed_forward_proj, tiny.vocab_size) == (
        256, 1024, 32, 4, 4, 4, "gated-gelu", 32128)
    assert configs["t5_small.gin"].tie_word_embeddings and configs["t5_small.gin"].feed_forward_proj == "relu"
    for name, expected in KNOWN_SIZES.items():
        shapes = nn.unbox(abstract_params(configs[name]))
        assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == expected, name
