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


def dense(x: jax.Array, kernel: jax.Array, *, transposed: bool = False, out_dtype: jnp.dtype | None = None,
          operand_dtype: jnp.dtype | None = None) -> jax.Array:
    """x [..., in] times kernel [in, out] (or [out, in] when transposed) -> [..., out].

    Both operands are multiplied in `operand_dtype` (default: x's dtype, the
    compute dtype); the result comes in `out_dtype` (default: x's dtype).
    With 16-bit operands the products accumulate in float32 and the gradients
    come back in x's and the kernel's own dtypes (`_low_precision_dense`).
    The leading dims are folded into one row dim first. XLA:CPU then takes
    the weight gradient x^T dy straight from row-major operands; with [batch,
    length, ...] operands it copies a transposed [out, batch*length] gradient
    through a slow strided fusion (measured: the tiny T5 train step spent ~40%
    of its time in those copies).
    """
    rows = x.reshape(-1, x.shape[-1])
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    operand_dtype = jnp.dtype(operand_dtype or x.dtype)
    if jnp.finfo(operand_dtype).bits == 16:
        y = _low_precision_dense(rows, kernel, transposed, (operand_dtype, out_dtype, rows.dtype))
    else:
        y = _product(rows.astype(operand_dtype), kernel.astype(operand_dtype), transposed, out_dtype)
    return y.reshape(x.shape[:-1] + (y.shape[-1],))


def _product(rows: jax.Array, kernel: jax.Array, transposed: bool, out_dtype: jnp.dtype) -> jax.Array:
    """rows [n, in] x kernel [in, out] (or [out, in]) -> [n, out], accumulated and returned in out_dtype."""
    return jnp.einsum("ni,oi->no" if transposed else "ni,io->no", rows, kernel, preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _low_precision_dense(rows: jax.Array, kernel: jax.Array, transposed: bool,
                         dtypes: tuple[jnp.dtype, jnp.dtype, jnp.dtype]) -> jax.Array:
    """rows [n, in] x kernel -> [n, out]; dtypes = (16-bit operand dtype, out dtype, rows' dtype).

    Every product (the forward one and the two of the gradient) multiplies
    16-bit operands into a float32 result: the mixed-precision recipe of TPUs
    and GPUs, and the form XLA:CPU's bfloat16 kernels take (on avx512_bf16,
    bf16 x bf16 -> f32 runs at twice the float32 rate, while a bf16 -> bf16
    product is upcast to float32). The saved activation is the 16-bit copy;
    the gradients come back in the dtypes of rows and kernel, so float32 params
    and activations are never rounded on their way back.
    """
    return _low_precision_dense_fwd(rows, kernel, transposed, dtypes)[0]


def _low_precision_dense_fwd(rows, kernel, transposed, dtypes):
    operand_dtype, out_dtype, _ = dtypes
    low_rows = rows.astype(operand_dtype)
    y = _product(low_rows, kernel.astype(operand_dtype), transposed, jnp.float32).astype(out_dtype)
    # The kernel itself is the residual (a parameter, alive anyway), cast again in the backward pass.
    return y, (low_rows, kernel)


def _low_precision_dense_bwd(transposed, dtypes, residuals, grad):
    operand_dtype, _, rows_dtype = dtypes
    low_rows, kernel = residuals
    low_kernel, grad = kernel.astype(operand_dtype), grad.astype(operand_dtype)
    d_rows = jnp.einsum("no,oi->ni" if transposed else "no,io->ni", grad, low_kernel,
                        preferred_element_type=jnp.float32)
    if transposed:
        d_kernel = contract_leading("no,ni->oi", grad, low_rows)
    else:
        d_kernel = contract_leading("ni,no->io", low_rows, grad)
    return d_rows.astype(rows_dtype), d_kernel.astype(kernel.dtype)


_low_precision_dense.defvjp(_low_precision_dense_fwd, _low_precision_dense_bwd)


def contract_leading(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """einsum(spec, x, y) in float32 for 16-bit x and y that share one summed index, as a weight gradient's x^T dy.

    XLA:CPU's bfloat16 kernels (YNNPACK) take only a left operand laid out
    [batch..., rows, summed]. When the summed index leads (the weight gradient
    x^T dy, attention's dK and dV) XLA upcasts both operands to float32, or,
    for some batched products, leaves a bfloat16 product to a fallback that
    rejects it at run time; it also folds a plain transpose (or a bitcast
    round trip) back into the product. Here x is laid out [batch, x's free,
    summed] and y [batch, summed, y's free], and the summed index is padded
    with zeros (which add nothing): XLA then writes those layouts as real
    arrays and multiplies at the bfloat16 rate, 1.2-2.3x the float32 one for
    the tiny T5's shapes (README.md, training throughput). The operand with
    fewer free elements is the one transposed (x and y swap places when x has
    more). Other backends take the einsum as it is.
    """
    x_spec, y_spec, out_spec = *spec.split("->")[0].split(","), spec.split("->")[1]
    if jax.default_backend() != "cpu":
        return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)
    batch = [index for index in out_spec if index in x_spec and index in y_spec]
    (summed,) = [index for index in x_spec if index in y_spec and index not in out_spec]
    x_free = [index for index in x_spec if index not in y_spec]
    y_free = [index for index in y_spec if index not in x_spec]
    if _size(x, x_spec, x_free) > _size(y, y_spec, y_free):
        # Transposing the larger operand costs twice the time (the tiny T5's mlp/wo weight gradient
        # over 3,328 rows: 15 ms, swapped 7 ms); the small float32 result is transposed back instead.
        x_spec, y_spec, x_free, y_free, x, y = y_spec, x_spec, y_free, x_free, y, x
    x = jnp.einsum(f"{x_spec}->{''.join(batch + x_free)}{summed}", x)
    y = jnp.einsum(f"{y_spec}->{''.join(batch)}{summed}{''.join(y_free)}", y)
    pad = 16 - x.shape[-1] % 16  # at least one zero: XLA drops an empty pad
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    y = jnp.pad(y, [(0, 0)] * len(batch) + [(0, pad)] + [(0, 0)] * len(y_free))
    batch_dims = tuple(range(len(batch)))
    product = jax.lax.dot_general(x, y, (((x.ndim - 1,), (len(batch),)), (batch_dims, batch_dims)),
                                  preferred_element_type=jnp.float32)
    # The barrier keeps XLA from folding the final transpose into the product (which then goes to the
    # fallback that rejects bfloat16 operands).
    return jnp.einsum(f"{''.join(batch + x_free + y_free)}->{out_spec}", jax.lax.optimization_barrier(product))


def _size(array: jax.Array, spec: str, indices: list[str]) -> int:
    """The number of elements `array` (laid out as `spec`) has along `indices`."""
    return math.prod(array.shape[spec.index(index)] for index in indices)


def attention_product(spec: str, a: jax.Array, b: jax.Array, operand_dtype: jnp.dtype) -> jax.Array:
    """einsum(spec, a, b) of two activations (attention's logits and context), float32 result.

    With 16-bit `operand_dtype` all three products (the forward one and the
    two of the gradient) take 16-bit operands and float32 sums, as `dense`'s
    do: XLA:CPU's batched bfloat16 products run at about twice the float32
    rate on avx512_bf16, and the saved residuals are the 16-bit copies. Every
    index of each operand must appear in the other operand or the result.
    """
    operand_dtype = jnp.dtype(operand_dtype)
    if jnp.finfo(operand_dtype).bits == 16:
        return _low_precision_einsum(a, b, spec, (operand_dtype, a.dtype, b.dtype))
    return jnp.einsum(spec, a.astype(operand_dtype), b.astype(operand_dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _low_precision_einsum(a: jax.Array, b: jax.Array, spec: str,
                          dtypes: tuple[jnp.dtype, jnp.dtype, jnp.dtype]) -> jax.Array:
    """dtypes = (16-bit operand dtype, a's dtype, b's dtype); see `attention_product`."""
    return _low_precision_einsum_fwd(a, b, spec, dtypes)[0]


def _low_precision_einsum_fwd(a, b, spec, dtypes):
    low_a, low_b = a.astype(dtypes[0]), b.astype(dtypes[0])
    return jnp.einsum(spec, low_a, low_b, preferred_element_type=jnp.float32), (low_a, low_b)


def _low_precision_einsum_bwd(spec, dtypes, residuals, grad):
    (low_a, low_b), (operands, out) = residuals, spec.split("->")
    spec_a, spec_b = operands.split(",")
    if not (set(spec_a) <= set(spec_b + out) and set(spec_b) <= set(spec_a + out)):
        raise ValueError(f"attention_product: {spec!r} sums an index over one operand only")
    grad = grad.astype(dtypes[0])
    d_a = jnp.einsum(f"{out},{spec_b}->{spec_a}", grad, low_b, preferred_element_type=jnp.float32)
    d_b = contract_leading(f"{spec_a},{out}->{spec_b}", low_a, grad)
    return d_a.astype(dtypes[1]), d_b.astype(dtypes[2])


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


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


# Multipliers of murmur3's 32-bit finalizer: a bijection of uint32 in which every input bit
# flips every output bit with probability ~1/2.
_FMIX32_MULTIPLIERS = (0x85EBCA6B, 0xC2B2AE35)
_GOLDEN_RATIO = 0x9E3779B9  # 2**32 / phi, odd: spreads consecutive leading indices over uint32


def _fmix32(x: jax.Array) -> jax.Array:
    for multiplier, shift in zip(_FMIX32_MULTIPLIERS, (16, 13)):
        x = (x ^ (x >> shift)) * np.uint32(multiplier)
    return x ^ (x >> 16)


def hashed_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Random uint32 bits [shape]: a hash of (key, element index), for dropout masks.

    bits = fmix32(fmix32(inner + k0) ^ fmix32(leading * 0x9E3779B9 + k1)), where k0, k1
    are the key's first and last words, `leading` is the position along axis 0 and
    `inner` the position within one [shape[1:]] slice (the golden-ratio multiplier
    keeps the two halves from mirroring each other: with one map for both, (i, j)
    and (j, i) would collide). Each element comes from its global position alone,
    so the bits do not depend on the mesh, and XLA fuses the draw into its
    consumer: about 20 integer ops per word. JAX's threefry (~45 ops per word, in
    a rolled loop on CPU with thousands of small copies) took 8-13% of the tiny T5
    train step (scripts/bench_train.py; README.md, training throughput). Good
    enough for dropout masks, not for cryptography.
    """
    words = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = jnp.asarray(words, jnp.uint32).reshape(-1)
    inner_size = math.prod(shape[1:])
    if inner_size >= 2**32:
        raise ValueError(f"hashed_bits: {shape} has {inner_size:,} elements per leading index, at most 2**32 - 1")
    inner = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, 0, -1):
        inner = inner + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    leading = _fmix32(jnp.arange(shape[0], dtype=jnp.uint32) * np.uint32(_GOLDEN_RATIO) + words[-1])
    leading = leading.reshape((-1,) + (1,) * (len(shape) - 1))
    return _fmix32(_fmix32(inner + words[0]) ^ leading)


class Dropout(nn.Module):
    """Inverted dropout whose keep test uses 16 hashed random bits per element.

    The bits come from `hashed_bits` (one uint32 word for two elements) instead of
    flax's threefry floats: the same masks on any mesh, at a fraction of the cost.
    The keep probability is quantized to k / 65536 (|error| <= 8e-6) and the kept
    values are scaled by exactly its inverse, so the layer stays unbiased.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        threshold = round((1.0 - self.rate) * 65536)
        width = x.shape[-1]
        words = hashed_bits(self.make_rng("dropout"), x.shape[:-1] + ((width + 1) // 2,))
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
    cache_length, d_kv] in the "cache" collection and attends one new query to
    it; cross-attention with decode=True reads the encoder keys/values that the
    initializing call projected into the cache (distill/models/t5.py init_cache),
    so decode steps never project them again.
    """

    num_heads: int
    d_kv: int
    dropout_rate: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    matmul_dtype: jnp.dtype | None = None  # operand dtype of the projections (None: dtype)

    @property
    def _operand_dtype(self) -> jnp.dtype:
        """The dtype every product multiplies in: matmul_dtype, else the compute dtype."""
        return jnp.dtype(self.matmul_dtype or self.dtype)

    def _kernel(self, name: str, shape: tuple[int, int], axes: tuple[str, str], init) -> jax.Array:
        return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

    def _project(self, kernel: jax.Array, x: jax.Array) -> jax.Array:
        """[b, l, embed] x [embed, heads*d_kv] -> [b, l, heads, d_kv]."""
        y = dense(x.astype(self.dtype), kernel, operand_dtype=self.matmul_dtype)
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
        cache_length: int | None = None,
        cross: bool = False,
    ) -> jax.Array:
        """inputs_q [b, lq, embed], inputs_kv [b, lk, embed], bias [1, heads, lq, lk] float32,
        mask [b, 1, lq, lk] bool (True = may attend). Returns [b, lq, embed].

        decode=True: `decode_position` is the step's position (None on the initializing
        call, which creates the cache with `cache_length` positions)."""
        d_model = inputs_q.shape[-1]
        inner = self.num_heads * self.d_kv
        kv_axes = ("embed", "joined_kv")
        query_kernel = self._kernel("query", (d_model, inner), kv_axes, _fan_in(1.0 / self.d_kv))
        key_kernel = self._kernel("key", (d_model, inner), kv_axes, _fan_in(1.0))
        value_kernel = self._kernel("value", (d_model, inner), kv_axes, _fan_in(1.0))
        out_kernel = self._kernel("out", (inner, d_model), ("joined_kv", "embed"), _fan_in(1.0))

        query = self._project(query_kernel, inputs_q)
        if decode and cross:
            key, value = self._cached_cross_kv(key_kernel, value_kernel, inputs_kv)
        else:
            key = self._project(key_kernel, inputs_kv)
            value = self._project(value_kernel, inputs_kv)
            if decode:
                key, value = self._update_self_cache(key, value, decode_position, cache_length)
        # Decode caches are head-major [b, h, k, d], the layout the attention dots read: cached
        # [b, k, h, d] keys/values were transposed whole on every step (a third of a tiny T5's step).
        kv = "bhkd" if decode else "bkhd"
        rows = query.shape[0]
        beams_as_queries = decode and cross and rows != key.shape[0]
        if beams_as_queries:
            # Beam search keeps the encoder keys/values once per input row (distill/decoding.py,
            # beam_invariant); the row's beams ([b * beams, 1, h, d], b-major) become its queries,
            # [b, h, beams, d]: one small product per row and head instead of a matrix-vector
            # product per beam, each reading the same keys (XLA:CPU, T5 small, 32 rows x 4 beams,
            # bfloat16: 0.52 ms a product in the decode loop; standalone, 1.7-4.7 ms -> 0.3-0.4 ms a layer).
            query = query.reshape((key.shape[0], -1) + query.shape[2:]).swapaxes(1, 2)
        q = "bhqd" if beams_as_queries else "bqhd"

        logits = attention_product(f"{q},{kv}->bhqk", query, key, self._operand_dtype)
        if bias is not None:
            logits = add_position_bias(logits, bias)
        if mask is not None:
            logits = jnp.where(mask, logits, MASK_BIAS)
        weights = jax.nn.softmax(logits, axis=-1)
        if not deterministic and self.dropout_rate > 0:
            weights = Dropout(self.dropout_rate)(weights, deterministic=False)
        context = attention_product(f"bhqk,{kv}->{q}", weights.astype(self.dtype), value,
                                    self._operand_dtype).astype(self.dtype)
        if beams_as_queries:
            context = context.swapaxes(1, 2).reshape((rows, 1) + context.shape[1:2] + context.shape[3:])
        context = constrain(context, "batch", "length", "heads", "kv")
        context = context.reshape(context.shape[:2] + (inner,))
        out = dense(context, out_kernel, operand_dtype=self.matmul_dtype)
        return constrain(out, "batch", "length", "embed")

    def _cache_layout(self, x: jax.Array) -> jax.Array:
        """[b, l, h, d] -> [b, h, l, d] in the dtype the attention products read.

        With 16-bit products the caches hold 16-bit keys and values: the
        products would round them to 16 bits anyway, and a float32 cache was
        cast whole on every decode step (and reordered at twice the bytes in
        beam search).
        """
        low = jnp.finfo(self._operand_dtype).bits == 16
        return _heads_first(x.astype(self._operand_dtype) if low else x)

    def _update_self_cache(
        self, key: jax.Array, value: jax.Array, position: jax.Array | None, cache_length: int | None
    ) -> tuple[jax.Array, jax.Array]:
        """Write this step's key/value [b, 1, h, d] at `position`; return the whole cache [b, h, cache_length, d].

        The initializing call (position None) creates the zeroed cache and
        attends to its own keys only.
        """
        key, value = self._cache_layout(key), self._cache_layout(value)
        if position is None:
            shape = key.shape[:2] + (cache_length or key.shape[2], key.shape[3])
            self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
            self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
            return key, value
        if key.shape[2] != 1:
            raise ValueError(f"decode=True expects one decoder token per step, got length {key.shape[2]}")
        cached_key, cached_value = self.variable("cache", "cached_key"), self.variable("cache", "cached_value")
        start = (0, 0, position, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), start)
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype), start
        )
        return cached_key.value, cached_value.value

    def _cached_cross_kv(
        self, key_kernel: jax.Array, value_kernel: jax.Array, encoded: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Encoder keys/values [b, h, enc_len, d]: projected by the initializing call, then read.

        Projecting them inside the decode loop (under a lax.cond on the step)
        made XLA copy both cached arrays out of the cond on every step (9% of a
        tiny T5's beam search, scripts/bench_decode.py).
        """
        if self.has_variable("cache", "cached_key"):
            return self.get_variable("cache", "cached_key"), self.get_variable("cache", "cached_value")
        key = self._cache_layout(self._project(key_kernel, encoded))
        value = self._cache_layout(self._project(value_kernel, encoded))
        self.put_variable("cache", "cached_key", key)
        self.put_variable("cache", "cached_value", value)
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
    matmul_dtype: jnp.dtype | None = None  # operand dtype of the products (None: dtype)

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        """[b, l, embed] -> [b, l, embed]."""
        d_model = x.shape[-1]

        def project(name, shape, axes, inputs):
            init = nn.with_logical_partitioning(_fan_in(1.0), axes)
            kernel = self.param(name, init, shape, self.param_dtype)
            return dense(inputs.astype(self.dtype), kernel, operand_dtype=self.matmul_dtype)

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
    matmul_dtype: jnp.dtype | None = None  # operand dtype of `attend` (None: dtype)

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
        return dense(x.astype(self.dtype), self.embedding, transposed=True, out_dtype=jnp.float32,
                     operand_dtype=self.matmul_dtype)
