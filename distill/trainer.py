"""Sharded train/eval steps for the T5 student (T5X's trainer, on jax.jit).

    partitioner = Partitioner(num_partitions=2)
    trainer = Trainer(config=cfg, optimizer=make_optimizer("adamw"), partitioner=partitioner)
    state = trainer.create_state()               # born sharded, never on one device
    state, metrics = trainer.train_step(state, numpy_batch)
    metrics = trainer.eval_step(state, numpy_batch)

`train_step` and `eval_step` are module-level pure functions of (state,
batch) and the model object (distill/models/student.py, which owns
`loss_fn`); the Trainer compiles them once per batch layout (packed /
unpacked) through `Partitioner.jit`, the one place they are jitted, with the
state donated. Dropout keys are `fold_in(fold_in(PRNGKey(seed), step), microbatch)`:
a resumed run draws exactly the masks an uninterrupted one would, and since a
mask hashes each element's global position (distill/models/layers.py,
`hashed_bits`) the masks do not depend on the mesh.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill import losses
from distill.errors import UserError
from distill.heap import release_freed_heap
from distill.models.student import StudentModel
from distill.models.t5 import T5Config, init_params
from distill.partitioning import Partitioner

Batch = Mapping[str, Any]

# Default lengths for building the parameter shapes (T5's params do not depend on them).
_INIT_LENGTH = 8


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: step (int32 scalar), params, opt_state."""

    step: jax.Array
    params: Any
    opt_state: Any


class Trainer:
    """Owns the model, the optimizer, the loss settings and the compiled steps.

    Args:
      config: the student's T5Config (dtype = compute dtype, param_dtype = storage).
      optimizer: an optax transformation (see distill.optimizers.make_optimizer).
      partitioner: the mesh + rules the steps are compiled for.
      alpha: label-task weight of the step-by-step loss (1.0 = label task only).
      label_smoothing, z_loss: see distill.losses.
      num_microbatches: gradient accumulation; the global batch is split in this
        many strided microbatches and per-task means stay global-batch means.
      seed: seeds parameter init and dropout.
    """

    def __init__(
        self,
        *,
        config: T5Config,
        optimizer: optax.GradientTransformation,
        partitioner: Partitioner,
        alpha: float = 0.5,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        num_microbatches: int = 1,
        seed: int = 0,
    ):
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha={alpha} must lie in [0, 1]")
        if num_microbatches < 1:
            raise UserError(f"num_microbatches={num_microbatches} must be at least 1")
        self.config = config
        self.model = StudentModel(config=config, alpha=alpha, label_smoothing=label_smoothing, z_loss=z_loss)
        self.optimizer = optimizer
        self.partitioner = partitioner
        self.num_microbatches = num_microbatches
        self.seed = seed
        self._abstract: TrainState | None = None
        self._shardings: TrainState | None = None
        self._jitted: dict[tuple, Any] = {}
        self._compiled_shapes: set[tuple] = set()

    # ----------------------------------------------------------- state layout
    def _boxed_variables(self, rng: jax.Array, lengths: tuple[int, int] = (_INIT_LENGTH,) * 2) -> Any:
        return init_params(self.config, rng, encoder_length=lengths[0], decoder_length=lengths[1])

    def _layout(self) -> tuple[TrainState, TrainState]:
        """(abstract state of ShapeDtypeStructs, matching NamedSharding tree)."""
        if self._abstract is None:
            boxed = jax.eval_shape(self._boxed_variables, jax.random.PRNGKey(0))
            param_shardings = self.partitioner.shardings_for(boxed)["params"]
            abstract_params = nn.unbox(boxed)["params"]
            opt_shardings = self.partitioner.optimizer_state_shardings(
                self.optimizer, abstract_params, param_shardings
            )
            replicated = self.partitioner.replicated
            self._abstract = TrainState(
                step=jax.ShapeDtypeStruct((), jnp.int32),
                params=abstract_params,
                opt_state=jax.eval_shape(self.optimizer.init, abstract_params),
            )
            self._shardings = TrainState(
                step=replicated, params=param_shardings, opt_state=opt_shardings
            )
        return self._abstract, self._shardings

    @property
    def abstract_state(self) -> TrainState:
        """The state's shapes/dtypes (jax.ShapeDtypeStruct leaves), without allocating it."""
        return self._layout()[0]

    @property
    def state_shardings(self) -> TrainState:
        """NamedSharding for every leaf of the state (params by the logical rules)."""
        return self._layout()[1]

    def create_state(
        self, rng: jax.Array | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> TrainState:
        """Freshly initialized state, created directly in its sharded layout.

        The init function is jit-compiled with `out_shardings`, so every device
        only ever materializes its own shard (large models fit). `rng` defaults
        to PRNGKey(seed); `input_shapes` ({"encoder_input_tokens": [b, Li],
        "decoder_input_tokens": [b, Lt]}) only sizes the dummy init inputs, T5's
        parameter shapes do not depend on them.
        """
        rng = jax.random.PRNGKey(self.seed) if rng is None else rng
        lengths = (_INIT_LENGTH, _INIT_LENGTH)
        if input_shapes:
            lengths = (
                input_shapes["encoder_input_tokens"][-1], input_shapes["decoder_input_tokens"][-1]
            )

        def init(key):
            params = nn.unbox(self._boxed_variables(key, lengths))["params"]
            return TrainState(
                step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params)
            )

        _, shardings = self._layout()
        jitted = self.partitioner.jit(init, self.partitioner.replicated, shardings)
        return jitted(rng)

    def init_from_params(self, params: Any) -> TrainState:
        """State at step 0 from existing params (an HF import, an earlier run's params).

        `params` is a nested dict matching `abstract_state.params` (numpy or jax
        arrays, boxed or not); it is cast to the param dtype and placed shard by
        shard (works on several hosts, each holding the full numpy params).
        """
        abstract, shardings = self._layout()
        params = nn.unbox(params)
        _check_same_tree(abstract.params, params)

        def place(spec, sharding, value):
            if isinstance(value, jax.Array) and value.sharding == sharding:
                return value.astype(spec.dtype)
            host = np.asarray(jax.device_get(value)).astype(spec.dtype)
            return jax.make_array_from_callback(spec.shape, sharding, lambda index: host[index])

        placed = jax.tree.map(place, abstract.params, shardings.params, params)

        def init(p):
            return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.optimizer.init(p))

        jitted = self.partitioner.jit(init, (shardings.params,), shardings)
        return jitted(placed)

    def _prepare(self, batch: Batch) -> dict[str, jax.Array]:
        if not all(isinstance(v, jax.Array) for v in batch.values()):
            batch = self.partitioner.shard_batch(batch)
        row_counts = sorted({value.shape[0] for value in batch.values()})
        if len(row_counts) > 1 and self.num_microbatches > 1:
            raise UserError(
                f"this batch's decoder rows each hold several encoder rows' targets ({row_counts[-1]} encoder "
                f"rows, {row_counts[0]} decoder rows), which num_microbatches ({self.num_microbatches}) would "
                "split apart: pack with decoder_group=1 (distill/batch_packing.py)"
            )
        for rows in row_counts:
            self.partitioner.check_batch_size(rows)
            if rows % (self.num_microbatches * self.partitioner.data_parallel_size):
                raise UserError(
                    f"batch size {rows} is not divisible by num_microbatches "
                    f"({self.num_microbatches}) x data-parallel size "
                    f"({self.partitioner.data_parallel_size})"
                )
        return dict(batch)

    def _jitted_step(self, kind: str, keys: frozenset[str]):
        cache_key = (kind, keys)
        if cache_key not in self._jitted:
            _, shardings = self._layout()
            replicated = self.partitioner.replicated
            batch_sharding = self.partitioner.batch_sharding
            if kind == "train":
                step = functools.partial(train_step, model=self.model, optimizer=self.optimizer,
                                         num_microbatches=self.num_microbatches, seed=self.seed)
                fn = self.partitioner.jit(
                    step,
                    in_shardings=(shardings, batch_sharding),
                    out_shardings=(shardings, replicated),
                    donate_argnums=(0,),
                )
            else:
                fn = self.partitioner.jit(
                    functools.partial(eval_step, model=self.model),
                    in_shardings=(shardings, batch_sharding),
                    out_shardings=replicated,
                )
            self._jitted[cache_key] = fn
        return self._jitted[cache_key]

    def _compiled_step(self, kind: str, state: TrainState, batch: Batch):
        """The jitted step, compiled for this batch's shapes before it first runs.

        A new shape is compiled ahead of its first call and the compiler's freed
        memory handed back (distill/heap.py), so the step's buffers do not stack
        on top of it: same executable, lower peak RSS.
        """
        fn = self._jitted_step(kind, frozenset(batch))
        shapes = (kind, tuple(sorted((name, np.shape(value)) for name, value in batch.items())))
        if shapes not in self._compiled_shapes:
            fn.precompile(state, batch)
            release_freed_heap()
            self._compiled_shapes.add(shapes)
        return fn

    def precompile_train_step(self, state: TrainState, batch: Batch) -> None:
        """Compiles the train step for `batch`'s shapes without running it (`state` is left as it is)."""
        self._compiled_step("train", state, self._prepare(batch))

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step on a global batch; `state` is donated (do not reuse it).

        Args:
          batch: THE training batch (distill.feature_converters): numpy arrays
            [batch, length] on each host (this host's slice), or global jax.Arrays.
        Returns:
          (new state, metrics): loss, label_loss, rationale_loss, z_loss,
          label_tokens, rationale_tokens, accuracy, grad_norm (replicated scalars).
        """
        batch = self._prepare(batch)
        return self._compiled_step("train", state, batch)(state, batch)

    def eval_step(self, state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        """Loss metrics of `state` on a batch (no dropout, no update)."""
        batch = self._prepare(batch)
        return self._compiled_step("eval", state, batch)(state, batch)


# ----------------------------------------------------------------------------
# The pure steps (compiled by Trainer through its Partitioner)
# ----------------------------------------------------------------------------


def dropout_rng(seed: int, step: jax.Array, microbatch: int | jax.Array, rate: float) -> jax.Array | None:
    """fold_in(fold_in(PRNGKey(seed), step), microbatch), or None without dropout (resume-exact)."""
    if rate == 0.0:
        return None
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), step), microbatch)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: StudentModel,
    optimizer: optax.GradientTransformation,
    num_microbatches: int = 1,
    seed: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch: (new state, metrics).

    Under gradient accumulation the batch is split in `num_microbatches`
    strided microbatches (microbatch j holds rows j, j+n, ...: each stays
    spread over every data-parallel shard) and every per-task mean keeps the
    global batch's token counts as its denominator.
    """
    counts = losses.task_token_counts(batch)
    grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
    rate = model.config.dropout_rate
    n = num_microbatches
    if n == 1:
        (_, sums), grads = grad_fn(state.params, batch, dropout_rng(seed, state.step, 0, rate), counts)
    else:
        def split(x):
            x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
            return nn.with_logical_constraint(x, (None, "batch", "length"))

        micro = {k: split(v) for k, v in batch.items()}

        def body(carry, inputs):
            index, mb = inputs
            (_, mb_sums), mb_grads = grad_fn(state.params, mb, dropout_rng(seed, state.step, index, rate), counts)
            return jax.tree.map(jnp.add, carry, (mb_grads, mb_sums)), None

        zeros = (
            jax.tree.map(jnp.zeros_like, state.params),
            {k: jnp.zeros((), jnp.float32) for k in losses.SUM_KEYS},
        )
        (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(n), micro))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    _, metrics = losses.loss_from_sums(sums, alpha=model.alpha)
    metrics["grad_norm"] = optax.global_norm(grads)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(state: TrainState, batch: Batch, *, model: StudentModel) -> dict[str, jax.Array]:
    """Loss metrics of `state` on a batch (no dropout, no update)."""
    _, sums = model.loss_fn(state.params, batch, None)
    return losses.loss_from_sums(sums, alpha=model.alpha)[1]


def _check_same_tree(expected: Any, given: Any) -> None:
    """UserError naming the first missing/unexpected/misshapen param."""
    want = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {
        jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(given)
    }
    for name in sorted(want.keys() - have.keys())[:1]:
        raise UserError(f"params lack {name} (shape {want[name]}): not a checkpoint of this T5Config")
    for name in sorted(have.keys() - want.keys())[:1]:
        raise UserError(f"params have unexpected {name}: not a checkpoint of this T5Config")
    for name, shape in want.items():
        if tuple(have[name]) != tuple(shape):
            raise UserError(
                f"param {name} has shape {tuple(have[name])}, this T5Config needs {tuple(shape)}"
            )
