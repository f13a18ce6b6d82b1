"""The student network: a pure Flax T5 encoder-decoder (original T5, T5 v1.1, Flan-T5, mT5).

One frozen `T5Config` covers the family: original T5 uses a ReLU MLP and
logits from the (tied) token embedding scaled by d_model**-0.5; v1.1 /
Flan-T5 / mT5 use a gated-GELU MLP and a separate `logits_dense`.

Parameter tree (`unbox(init_params(...))["params"]`):

    token_embedder/embedding                      [vocab, embed]
    encoder/relpos_bias/rel_embedding             [heads, relpos_buckets]
    encoder/layers_<i>/pre_attention_layer_norm/scale
    encoder/layers_<i>/attention/{query,key,value} [embed, joined_kv], out [joined_kv, embed]
    encoder/layers_<i>/pre_mlp_layer_norm/scale
    encoder/layers_<i>/mlp/{wi | wi_0, wi_1}       [embed, mlp], wo [mlp, embed]
    encoder/encoder_norm/scale
    decoder/relpos_bias/rel_embedding
    decoder/layers_<i>/{pre_self_attention_layer_norm, self_attention,
                        pre_cross_attention_layer_norm, encoder_decoder_attention,
                        pre_mlp_layer_norm, mlp}
    decoder/decoder_norm/scale
    decoder/logits_dense/kernel                   [embed, vocab]   (untied only)

Decoding with a KV cache (`decode=True`): `init_cache` builds the "cache"
collection (decoder/cache_index scalar, per layer self_attention and
encoder_decoder_attention cached_key/cached_value [batch, heads, length,
d_kv], bfloat16 when the products are, the latter projected from the encoder
outputs once); each `T5.decode(..., decode=True)` call consumes one token [b, 1].
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from distill.errors import UserError
from distill.models.layers import MLP, Attention, Dropout, Embed, RelativePositionBias, RMSNorm, constrain, dense

# feed_forward_proj -> (activation, gated); names follow Hugging Face's T5Config.
FEED_FORWARD_PROJ = {
    "relu": ("relu", False),
    "gelu": ("gelu", False),
    "silu": ("silu", False),
    "gated-gelu": ("gelu_new", True),
    "gated-relu": ("relu", True),
    "gated-silu": ("silu", True),
}
REMAT_POLICIES = ("none", "full", "minimal")
DTYPES = ("float32", "bfloat16", "float16")
# Upper bounds on the shape fields, far above T5 XXL / mT5 (vocab 250,112): a config
# read from a file is refused before it can make tracing or allocation run away.
SIZE_LIMITS = {
    "vocab_size": 1 << 21, "d_model": 1 << 16, "d_kv": 1 << 13, "d_ff": 1 << 18, "num_heads": 1 << 10,
    "num_encoder_layers": 256, "num_decoder_layers": 256, "relative_attention_num_buckets": 1 << 12,
    "relative_attention_max_distance": 1 << 20,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters of the T5 family; defaults are T5 v1.1 base.

    Plain str/int/float/bool fields so gin can bind them (`T5Config.d_model = 768`).
    """

    vocab_size: int = 32128
    d_model: int = 768
    d_kv: int = 64  # Per-head size; heads * d_kv need not equal d_model.
    d_ff: int = 2048
    num_heads: int = 12
    num_encoder_layers: int = 12
    num_decoder_layers: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"  # "relu" = original T5; see FEED_FORWARD_PROJ.
    tie_word_embeddings: bool = False  # True = original T5: logits from the embedding, scaled by d_model**-0.5.
    dtype: str = "float32"  # Compute dtype of matmuls/activations (softmax, norms, logits stay float32).
    # Operand dtype of the weight matrix products ("" = dtype). "bfloat16" with dtype "float32"
    # multiplies in bfloat16 (float32 sums) and keeps every activation and gradient float32:
    # twice XLA:CPU's float32 matmul rate on avx512_bf16 CPUs (distill/models/layers.py dense).
    matmul_dtype: str = ""
    param_dtype: str = "float32"
    remat_policy: str = "none"  # "none" | "full" (recompute each layer) | "minimal" (keep matmul outputs).
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        checks = [
            ("feed_forward_proj", self.feed_forward_proj in FEED_FORWARD_PROJ, sorted(FEED_FORWARD_PROJ)),
            ("remat_policy", self.remat_policy in REMAT_POLICIES, REMAT_POLICIES),
            ("dtype", self.dtype in DTYPES, DTYPES),
            ("param_dtype", self.param_dtype in DTYPES, DTYPES),
            ("matmul_dtype", self.matmul_dtype in ("", *DTYPES), ("", *DTYPES)),
        ]
        for field, ok, allowed in checks:
            if not ok:
                raise UserError(f"T5Config.{field} = {getattr(self, field)!r} is not supported; use one of {list(allowed)}")
        for field, limit in SIZE_LIMITS.items():
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
                raise UserError(f"T5Config.{field} = {value!r} must be an integer from 1 to {limit:,} "
                                "(a config from an untrusted file is checked before anything is built)")
        if not isinstance(self.dropout_rate, (int, float)) or not 0.0 <= self.dropout_rate < 1.0:
            raise UserError(f"T5Config.dropout_rate = {self.dropout_rate!r} must be in [0, 1)")

    def replace(self, **changes: Any) -> "T5Config":
        return dataclasses.replace(self, **changes)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def matmul_operand_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.matmul_dtype or self.dtype)


def _common(config: T5Config) -> dict:
    return dict(dtype=config.compute_dtype, param_dtype=config.weight_dtype)


def _norm(config: T5Config, name: str) -> RMSNorm:
    return RMSNorm(config.layer_norm_epsilon, name=name, **_common(config))


def _attention(config: T5Config, name: str) -> Attention:
    return Attention(config.num_heads, config.d_kv, config.dropout_rate, name=name,
                     matmul_dtype=config.matmul_operand_dtype, **_common(config))


def _mlp(config: T5Config) -> MLP:
    activation, gated = FEED_FORWARD_PROJ[config.feed_forward_proj]
    return MLP(config.d_ff, activation, gated, config.dropout_rate, name="mlp",
               matmul_dtype=config.matmul_operand_dtype, **_common(config))


def _relpos(config: T5Config, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(
        config.num_heads,
        config.relative_attention_num_buckets,
        config.relative_attention_max_distance,
        bidirectional,
        name="relpos_bias",
        **_common(config),
    )


def _remat(layer_cls: type[nn.Module], policy: str, static_argnums: tuple[int, ...]) -> type[nn.Module]:
    """Wrap a layer class in nn.remat per T5Config.remat_policy (argnum 0 is self)."""
    if policy == "none":
        return layer_cls
    jax_policy = None if policy == "full" else jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return nn.remat(layer_cls, policy=jax_policy, static_argnums=static_argnums)


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        """[b, l, embed] -> [b, l, embed]; pre-norm residual self-attention then MLP."""
        cfg = self.config
        dropout = Dropout(cfg.dropout_rate)
        y = _norm(cfg, "pre_attention_layer_norm")(x)
        y = _attention(cfg, "attention")(y, y, bias, mask, deterministic=deterministic)
        x = x + dropout(y, deterministic=deterministic)
        y = _norm(cfg, "pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic=deterministic)
        x = x + dropout(y, deterministic=deterministic)
        return constrain(x, "batch", "length", "embed")


class DecoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array,
        self_bias: jax.Array,
        self_mask: jax.Array,
        cross_mask: jax.Array,
        deterministic: bool,
        decode: bool,
        decode_position: jax.Array | None,
        cache_length: int | None,
    ) -> jax.Array:
        """[b, lt, embed] with encoded [b, li, embed] -> [b, lt, embed]."""
        cfg = self.config
        dropout = Dropout(cfg.dropout_rate)
        y = _norm(cfg, "pre_self_attention_layer_norm")(x)
        y = _attention(cfg, "self_attention")(
            y, y, self_bias, self_mask, deterministic=deterministic, decode=decode, decode_position=decode_position,
            cache_length=cache_length,
        )
        x = x + dropout(y, deterministic=deterministic)
        y = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        y = _attention(cfg, "encoder_decoder_attention")(
            y, encoded, None, cross_mask, deterministic=deterministic, decode=decode, cross=True,
        )
        x = x + dropout(y, deterministic=deterministic)
        y = _norm(cfg, "pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic=deterministic)
        x = x + dropout(y, deterministic=deterministic)
        return constrain(x, "batch", "length", "embed")


def _group_encoder_rows(
    encoded: jax.Array, tokens: jax.Array, segment_ids: jax.Array | None, decoder_rows: int
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """The encoder's rows laid out as the decoder's: each decoder row's G encoder rows end to end.

    A packed batch may hold G encoder rows' targets in one decoder row (distill/batch_packing.py,
    `decoder_group`; segment ids numbered across the group): with b encoder rows and n decoder rows,
    decoder row j attends to encoder rows [j * G, (j + 1) * G), G = ceil(b / n), so [b, li] becomes
    [n, G * li], the last group completed with padding rows (masked keys) when G does not divide b.
    Only the cross-attention sees the padding rows: the encoder computes b rows. Equal row counts
    are returned as they are.
    """
    rows, length = tokens.shape
    if rows == decoder_rows:
        return encoded, tokens, segment_ids
    group = -(-rows // decoder_rows)
    missing = decoder_rows * group - rows
    if missing >= group:
        raise ValueError(f"{rows} encoder rows do not group into {decoder_rows} decoder rows")

    def lay_out(x: jax.Array) -> jax.Array:
        x = jnp.pad(x, [(0, missing)] + [(0, 0)] * (x.ndim - 1)) if missing else x
        return x.reshape(decoder_rows, group * length, *x.shape[2:])

    encoded = constrain(lay_out(encoded), "batch", "length", "embed")
    return encoded, lay_out(tokens), None if segment_ids is None else lay_out(segment_ids)


def _key_mask(tokens: jax.Array) -> jax.Array:
    """[b, lk] tokens -> [b, 1, 1, lk]: keys that are not padding."""
    return (tokens != 0)[:, None, None, :]


def _segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """[b, lq], [b, lk] -> [b, 1, lq, lk]: pairs within the same packed example."""
    return query_segments[:, None, :, None] == key_segments[:, None, None, :]


class Encoder(nn.Module):
    config: T5Config
    embedder: Embed

    @nn.compact
    def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None, deterministic: bool) -> jax.Array:
        """tokens [b, li] -> encoded [b, li, embed]."""
        cfg = self.config
        dropout = Dropout(cfg.dropout_rate)
        x = dropout(self.embedder(tokens), deterministic=deterministic)
        x = constrain(x, "batch", "length", "embed")
        length = tokens.shape[1]
        bias = _relpos(cfg, bidirectional=True)(length, length)
        mask = _key_mask(tokens)
        if segment_ids is not None:
            mask = mask & _segment_mask(segment_ids, segment_ids)
        layer_cls = _remat(EncoderLayer, cfg.remat_policy, static_argnums=(4,))
        for i in range(cfg.num_encoder_layers):
            x = layer_cls(cfg, name=f"layers_{i}")(x, bias, mask, deterministic)
        x = _norm(cfg, "encoder_norm")(x)
        return dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config
    embedder: Embed

    @nn.compact
    def __call__(
        self,
        encoded: jax.Array,
        encoder_tokens: jax.Array,
        decoder_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None,
        decoder_segment_ids: jax.Array | None,
        deterministic: bool,
        decode: bool,
        max_decode_length: int | None,
    ) -> jax.Array:
        """decoder_tokens [b, lt] -> logits [b, lt, vocab] float32."""
        cfg = self.config
        dropout = Dropout(cfg.dropout_rate)
        relpos = _relpos(cfg, bidirectional=False)
        length = decoder_tokens.shape[1]
        if not decode:  # (a decode step's rows may be beams of fewer encoder rows: distill/decoding.py)
            encoded, encoder_tokens, encoder_segment_ids = _group_encoder_rows(
                encoded, encoder_tokens, encoder_segment_ids, decoder_tokens.shape[0])

        position = None
        if decode:
            initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialized:
                position = index.value
                index.value = position + 1

        if position is None:  # Teacher forcing (or the cache-creating call): a causal square.
            self_bias = relpos(length, length)
            self_mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
            if decoder_segment_ids is not None:
                self_mask = self_mask & _segment_mask(decoder_segment_ids, decoder_segment_ids)
        else:  # One step at `position` against a cache of max_length keys.
            if max_decode_length is None:
                max_decode_length = self.variables["cache"]["layers_0"]["self_attention"]["cached_key"].shape[2]
            self_bias = relpos(1, max_decode_length, query_offset=position)
            self_mask = (jnp.arange(max_decode_length) <= position)[None, None, None, :]
        cross_mask = _key_mask(encoder_tokens)
        if encoder_segment_ids is not None and decoder_segment_ids is not None and position is None:
            cross_mask = cross_mask & _segment_mask(decoder_segment_ids, encoder_segment_ids)

        x = dropout(self.embedder(decoder_tokens), deterministic=deterministic)
        x = constrain(x, "batch", "length", "embed")
        static = (6, 7, 9)
        layer_cls = DecoderLayer if decode else _remat(DecoderLayer, cfg.remat_policy, static_argnums=static)
        for i in range(cfg.num_decoder_layers):
            x = layer_cls(cfg, name=f"layers_{i}")(
                x, encoded, self_bias, self_mask, cross_mask, deterministic, decode, position, max_decode_length
            )
        x = _norm(cfg, "decoder_norm")(x)
        x = dropout(x, deterministic=deterministic)

        if cfg.tie_word_embeddings:
            logits = self.embedder.attend(x * (cfg.d_model**-0.5))
        else:
            kernel = self.param(
                "logits_dense",
                nn.with_logical_partitioning(
                    nn.initializers.variance_scaling(1.0, "fan_in", "normal"), ("embed", "vocab")
                ),
                (cfg.d_model, cfg.vocab_size),
                cfg.weight_dtype,
            )
            logits = dense(x, kernel, out_dtype=jnp.float32, operand_dtype=cfg.matmul_operand_dtype)
        return constrain(logits.astype(jnp.float32), "batch", "length", "vocab")


class T5(nn.Module):
    """T5 encoder-decoder. Attention masks come from tokens != 0 and, for packed batches, segment ids."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, matmul_dtype=cfg.matmul_operand_dtype, **_common(cfg))
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(
        self,
        encoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """encoder_input_tokens [b, li] -> [b, li, d_model] (compute dtype)."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, not enable_dropout)

    def decode(
        self,
        encoded: jax.Array,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> jax.Array:
        """Logits [b, lt, vocab] float32 for decoder_input_tokens [b, lt].

        decode=True: lt == 1, one step against the "cache" collection (apply
        with mutable=["cache"]); the step's position is the cache's own index.
        Without a cache (init_cache) this call creates it: self-attention caches
        of `max_decode_length` positions, and the encoder keys/values projected.
        """
        return self.decoder(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            not enable_dropout,
            decode,
            max_decode_length,
        )

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """Teacher-forced logits [b, lt, vocab] float32."""
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids=encoder_segment_ids, enable_dropout=enable_dropout
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            enable_dropout=enable_dropout,
        )


def init_params(
    config: T5Config, rng: jax.Array, *, encoder_length: int, decoder_length: int, batch_size: int = 1
) -> dict:
    """Fresh variables {"params": ...} with nn.LogicallyPartitioned leaves (use nn.unbox for arrays)."""
    encoder_tokens = jnp.ones((batch_size, encoder_length), jnp.int32)
    decoder_tokens = jnp.ones((batch_size, decoder_length), jnp.int32)
    # Jitted: op-by-op initialization of a deep model is dominated by dispatch.
    variables = jax.jit(T5(config).init)({"params": rng}, encoder_tokens, decoder_tokens)
    return {"params": variables["params"]}


def abstract_params(
    config: T5Config, *, encoder_length: int = 8, decoder_length: int = 8, batch_size: int = 1
) -> dict:
    """init_params as jax.ShapeDtypeStruct leaves (still boxed): shardings without allocating."""
    return jax.eval_shape(
        lambda rng: init_params(
            config, rng, encoder_length=encoder_length, decoder_length=decoder_length, batch_size=batch_size
        ),
        jax.random.PRNGKey(0),
    )


def init_cache(
    config: T5Config, params: Any, encoded: jax.Array, encoder_input_tokens: jax.Array, *, max_decode_length: int
) -> dict:
    """The "cache" collection for decode=True steps, at cache_index 0.

    encoded [b, Li, d_model] (T5.encode's output), encoder_input_tokens [b, Li].
    Leaves: decoder/cache_index (int32 scalar); per decoder layer
    self_attention/cached_{key,value} [b, heads, max_decode_length, d_kv]
    (zeros) and encoder_decoder_attention/cached_{key,value} [b, heads, Li,
    d_kv] (the encoder outputs projected once, here, not in the decode loop).
    Costs one decoder step's compute. params may be boxed or plain.
    """
    params = nn.unbox(params)
    if "params" in params:  # Accept {"params": ...} variables as well as the bare tree.
        params = params["params"]
    start = jnp.full((encoded.shape[0], 1), config.decoder_start_token_id, jnp.int32)
    _, variables = T5(config).apply(
        {"params": params}, encoded, encoder_input_tokens, start, decode=True,
        max_decode_length=max_decode_length, mutable=["cache"], method=T5.decode,
    )
    return variables["cache"]
