"""T5 building blocks: RMS norm, relative position bias, attention, MLP.

Every parameter is created with `nn.with_logical_partitioning` under T5X's
logical axis names, so `distill.partitioning` shards it by rules alone:

    embedding        [vocab, embed]
    attention q/k/v  [embed, joined_kv]      (joined_kv = heads * d_kv)
    attention out    [joined_kv, embed]
    mlp wi / wi_0/1  [embed, mlp]            mlp wo [mlp, embed]
    norm scale       [embed]
    relpos bias      [heads, relpos_buckets]

Kernels are stored 2-D (as T5X and Hugging Face do) so a checkpoint tensor
maps onto a parameter by a transpose. Matmuls run in the compute dtype;
norms, attention logits and softmax run in float32.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# Added to the logits of masked attention pairs. Finite (not -inf), so a row
# with every key masked (padding queries in packed batches) stays NaN-free.
MASK_BIAS = -1e10

_normal = nn.initializers.normal
_fan_in = functools.partial(nn.initializers.variance_scaling, mode="fan_in", distribution="normal")


def dense(x: jax.Array, kernel: jax.Array, *, transposed: bool = False, **dot_kwargs) -> jax.Array:
    """x [..., in] times kernel [in, out] (or [out, in] when transposed) -> [..., out].

    The leading dims are folded into one row dim first. XLA:CPU then takes
    the weight gradient x^T dy straight from row-major operands; with
    [batch, length, ...] operands it copies a transposed [out, batch*length]
    gradient through a slow strided fusion (measured: the tiny T5 train step
    spent ~40% of its time in those copies).
    """
    rows = x.reshape(-1, x.shape[-1])
    y = jnp.einsum("ni,oi->no" if transposed else "ni,io->no", rows, kernel, **dot_kwargs)
    return y.reshape(x.shape[:-1] + (y.shape[-1],))


@jax.custom_vjp
def add_position_bias(logits: jax.Array, bias: jax.Array) -> jax.Array:
    """logits [b, h, q, k] + bias [1, h, q, k], broadcast over the batch.

    Same value as `logits + bias`; the custom gradient sums the bias
    cotangent over the batch with a matrix-vector product. XLA:CPU lowers
    the plain broadcast's reduction to a strided loop that cost ~25% of the
    tiny T5 train step; the product runs at memory speed.
    """
    return logits + bias


def _add_position_bias_fwd(logits: jax.Array, bias: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    return logits + bias, bias.shape


def _add_position_bias_bwd(bias_shape: tuple[int, ...], grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    rows = grad.reshape(grad.shape[0], -1)
    ones = jnp.ones((grad.shape[0],), grad.dtype)
    return grad, jnp.einsum("b,bx->x", ones, rows).reshape(bias_shape)


add_position_bias.defvjp(_add_position_bias_fwd, _add_position_bias_bwd)


def constrain(x: jax.Array, *axes: str) -> jax.Array:
    """Annotate an activation with logical axes (a no-op outside a mesh/rules context)."""
    return nn.with_logical_constraint(x, axes)


class Dropout(nn.Module):
    """Inverted dropout whose keep test uses 16 random bits per element.

    flax's nn.Dropout draws a float from a full 32-bit threefry word per
    element; splitting each word into two 16-bit halves halves the threefry
    work, which was ~15% of the tiny T5 train step on CPU. The keep
    probability is quantized to k / 65536 (|error| <= 8e-6) and the kept
    values are scaled by exactly its inverse, so the layer stays unbiased.
    Masks depend only on the key and the element index, not on the mesh.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        threshold = round((1.0 - self.rate) * 65536)
        width = x.shape[-1]
        words = jax.random.bits(self.make_rng("dropout"), x.shape[:-1] + ((width + 1) // 2,), jnp.uint32)
        halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(x.shape[:-1] + (-1,))[..., :width]
        keep = halves < threshold
        return jnp.where(keep, x * jnp.asarray(65536 / threshold, x.dtype), jnp.zeros((), x.dtype))


class RMSNorm(nn.Module):
    """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, no mean subtraction, no bias."""

    epsilon: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return x32.astype(self.dtype) * scale.astype(self.dtype)


def relative_position_buckets(
    query_length: int, key_length: int, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bucket ids [query_length, key_length] for relative distance key_pos - query_pos.

    Small distances get one bucket each; larger ones share log-spaced buckets
    up to max_distance. Bidirectional (encoder) spends half the buckets on
    keys after the query; causal (decoder) only looks back. Computed in numpy
    float32 with the same operation order as the reference implementations,
    so bucket boundaries agree exactly.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).astype(relative.dtype) * num_buckets
        distance = np.abs(relative)
    else:
        distance = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Distances below max_exact take the `is_small` branch; clamp to 1 to keep log finite.
    log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    large = max_exact + (
        log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    ).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(is_small, distance, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
    """One learned scalar per (head, bucket), shared by every layer of a stack."""

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, query_length: int, key_length: int, query_offset: jax.Array | None = None) -> jax.Array:
        """Bias [1, heads, query_length, key_length] (float32).

        With query_offset (decode step), query_length is 1 and the row for
        absolute query position `query_offset` of a key_length square is used.
        """
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(_normal(1.0), ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        kwargs = dict(bidirectional=self.bidirectional, num_buckets=self.num_buckets, max_distance=self.max_distance)
        if query_offset is None:
            buckets = jnp.asarray(relative_position_buckets(query_length, key_length, **kwargs))
        else:
            square = jnp.asarray(relative_position_buckets(key_length, key_length, **kwargs))
            buckets = jax.lax.dynamic_slice_in_dim(square, query_offset, 1, axis=0)
        values = jnp.take(table.astype(jnp.float32), buckets, axis=1)  # [heads, q, k]
        return values[None]


class Attention(nn.Module):
    """Multi-head dot-product attention, T5 flavour (no 1/sqrt(d) scaling: it is folded into the query init).

    Self-attention with decode=True keeps a KV cache of [batch, heads,
    max_length, d_kv] in the "cache" collection and attends one new query to it;
    cross-attention with decode=True projects the encoder keys/values once
    (when `decode_position == 0`) and reuses them on later steps.
    """

    num_heads: int
    d_kv: int
    dropout_rate: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    def _kernel(self, name: str, shape: tuple[int, int], axes: tuple[str, str], init) -> jax.Array:
        kernel = self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)
        return kernel.astype(self.dtype)

    def _project(self, kernel: jax.Array, x: jax.Array) -> jax.Array:
        """[b, l, embed] x [embed, heads*d_kv] -> [b, l, heads, d_kv]."""
        y = dense(x.astype(self.dtype), kernel)
        y = y.reshape(y.shape[:2] + (self.num_heads, self.d_kv))
        return constrain(y, "batch", "length", "heads", "kv")

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        bias: jax.Array | None,
        mask: jax.Array | None,
        *,
        deterministic: bool,
        decode: bool = False,
        decode_position: jax.Array | None = None,
        cross: bool = False,
    ) -> jax.Array:
        """inputs_q [b, lq, embed], inputs_kv [b, lk, embed], bias [1, heads, lq, lk] float32,
        mask [b, 1, lq, lk] bool (True = may attend). Returns [b, lq, embed]."""
        d_model = inputs_q.shape[-1]
        inner = self.num_heads * self.d_kv
        kv_axes = ("embed", "joined_kv")
        query_kernel = self._kernel("query", (d_model, inner), kv_axes, _fan_in(1.0 / self.d_kv))
        key_kernel = self._kernel("key", (d_model, inner), kv_axes, _fan_in(1.0))
        value_kernel = self._kernel("value", (d_model, inner), kv_axes, _fan_in(1.0))
        out_kernel = self._kernel("out", (inner, d_model), ("joined_kv", "embed"), _fan_in(1.0))

        query = self._project(query_kernel, inputs_q)
        if decode and cross:
            key, value = self._cached_cross_kv(key_kernel, value_kernel, inputs_kv, decode_position)
        else:
            key = self._project(key_kernel, inputs_kv)
            value = self._project(value_kernel, inputs_kv)
            if decode:
                key, value = self._update_self_cache(key, value, decode_position)
        # Decode caches are head-major [b, h, k, d], the layout the attention dots read: cached
        # [b, k, h, d] keys/values were transposed whole on every step (a third of a tiny T5's step).
        kv = "bhkd" if decode else "bkhd"

        logits = jnp.einsum(f"bqhd,{kv}->bhqk", query, key, preferred_element_type=jnp.float32)
        logits = logits.astype(jnp.float32)
        if bias is not None:
            logits = add_position_bias(logits, bias)
        if mask is not None:
            logits = jnp.where(mask, logits, MASK_BIAS)
        weights = jax.nn.softmax(logits, axis=-1)
        if not deterministic and self.dropout_rate > 0:
            weights = Dropout(self.dropout_rate)(weights, deterministic=False)
        weights = weights.astype(self.dtype)
        context = jnp.einsum(f"bhqk,{kv}->bqhd", weights, value)
        context = constrain(context, "batch", "length", "heads", "kv")
        context = context.reshape(context.shape[:2] + (inner,))
        out = dense(context, out_kernel)
        return constrain(out, "batch", "length", "embed")

    def _update_self_cache(
        self, key: jax.Array, value: jax.Array, position: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """Write this step's key/value [b, 1, h, d] at `position`; return the whole cache [b, h, max_len, d].

        On the first (initializing) call the cache is created with the
        shape of the full-length decoder input and the step logic is skipped.
        """
        key, value = _heads_first(key), _heads_first(value)
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not initialized:
            return key, value
        if key.shape[2] != 1:
            raise ValueError(f"decode=True expects one decoder token per step, got length {key.shape[2]}")
        start = (0, 0, position, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), start)
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype), start
        )
        return cached_key.value, cached_value.value

    def _cached_cross_kv(
        self, key_kernel: jax.Array, value_kernel: jax.Array, encoded: jax.Array, position: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """Encoder keys/values [b, h, enc_len, d], projected at step 0 and cached after."""
        shape = (encoded.shape[0], self.num_heads, encoded.shape[1], self.d_kv)
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, self.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, self.dtype)

        def project():
            return (_heads_first(self._project(key_kernel, encoded)),
                    _heads_first(self._project(value_kernel, encoded)))

        if not initialized:
            return project()

        def reuse():
            return cached_key.value, cached_value.value

        key, value = jax.lax.cond(position == 0, project, reuse)
        cached_key.value, cached_value.value = key, value
        return key, value


def _heads_first(x: jax.Array) -> jax.Array:
    """[b, l, h, d] -> [b, h, l, d]: the decode caches' layout."""
    return jnp.swapaxes(x, 1, 2)


class MLP(nn.Module):
    """Feed-forward block: act(x W_i) W_o, or gated act(x W_i0) * (x W_i1) W_o."""

    d_ff: int
    activation: str  # "relu" | "gelu" | "gelu_new" | "silu"
    gated: bool
    dropout_rate: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        """[b, l, embed] -> [b, l, embed]."""
        d_model = x.shape[-1]

        def project(name, shape, axes, inputs):
            init = nn.with_logical_partitioning(_fan_in(1.0), axes)
            kernel = self.param(name, init, shape, self.param_dtype).astype(self.dtype)
            return dense(inputs.astype(self.dtype), kernel)

        act = ACTIVATIONS[self.activation]
        if self.gated:
            hidden = act(project("wi_0", (d_model, self.d_ff), ("embed", "mlp"), x))
            hidden = hidden * project("wi_1", (d_model, self.d_ff), ("embed", "mlp"), x)
        else:
            hidden = act(project("wi", (d_model, self.d_ff), ("embed", "mlp"), x))
        hidden = constrain(hidden, "batch", "length", "mlp")
        hidden = Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        out = project("wo", (self.d_ff, d_model), ("mlp", "embed"), hidden)
        return constrain(out, "batch", "length", "embed")


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # tanh approximation (HF "gelu_new")
    "silu": jax.nn.silu,
}


class Embed(nn.Module):
    """Token embedding [vocab, embed], shared by encoder, decoder and (when tied) the logits."""

    vocab_size: int
    features: int
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(_normal(1.0), ("vocab", "embed")),
            (self.vocab_size, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """[b, l] int -> [b, l, embed] in the compute dtype."""
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """[b, l, embed] -> logits [b, l, vocab] float32 (tied output layer)."""
        return dense(
            x.astype(self.dtype), self.embedding.astype(self.dtype), transposed=True, preferred_element_type=jnp.float32
        )
