"""Sharded train/eval steps for the T5 student (T5X's trainer, on jax.jit).

    partitioner = Partitioner(num_partitions=2)
    trainer = Trainer(config=cfg, optimizer=make_optimizer("adamw"), partitioner=partitioner)
    state = trainer.create_state()               # born sharded, never on one device
    state, metrics = trainer.train_step(state, numpy_batch)
    metrics = trainer.eval_step(state, numpy_batch)

`train_step` and `eval_step` are pure functions of (state, batch) compiled
once per batch layout (packed / unpacked) by `Partitioner.jit` with the state
donated. Dropout keys are `fold_in(fold_in(PRNGKey(seed), step), microbatch)`:
a resumed run draws exactly the masks an uninterrupted one would, and with
JAX's partitionable threefry the masks do not depend on the mesh.
"""
from __future__ import annotations

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
from distill.models.t5 import T5, T5Config, init_params
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
        self.model = T5(config)
        self.optimizer = optimizer
        self.partitioner = partitioner
        self.alpha = alpha
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.num_microbatches = num_microbatches
        self.seed = seed
        self._abstract: TrainState | None = None
        self._shardings: TrainState | None = None
        self._compiled: dict[str, Any] = {}

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

    # ------------------------------------------------------------------ steps
    def loss_fn(
        self,
        params: Any,
        batch: Batch,
        dropout_rng: jax.Array | None,
        token_counts: Mapping[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss, per-task sums) of one (micro)batch; dropout on iff dropout_rng is given.

        `token_counts` are the denominators of the per-task means (default: this
        batch's counts; the global batch's under gradient accumulation).
        """
        logits = self.model.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            enable_dropout=dropout_rng is not None,
            rngs={"dropout": dropout_rng} if dropout_rng is not None else None,
        )
        sums = losses.loss_sums(
            logits, batch, label_smoothing=self.label_smoothing, z_loss=self.z_loss
        )
        loss, _ = losses.loss_from_sums(sums, alpha=self.alpha, token_counts=token_counts)
        return loss, sums

    def _dropout_rng(self, step: jax.Array, microbatch: int | jax.Array) -> jax.Array | None:
        if self.config.dropout_rate == 0.0:
            return None
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        return jax.random.fold_in(key, microbatch)

    def _train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        counts = losses.task_token_counts(batch)
        grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)
        n = self.num_microbatches
        if n == 1:
            (_, sums), grads = grad_fn(state.params, batch, self._dropout_rng(state.step, 0), counts)
        else:
            # Strided split: microbatch j holds rows j, j+n, j+2n, ... so each one
            # stays spread over every data-parallel shard.
            def split(x):
                x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
                return nn.with_logical_constraint(x, (None, "batch", "length"))

            micro = {k: split(v) for k, v in batch.items()}

            def body(carry, inputs):
                index, mb = inputs
                (_, mb_sums), mb_grads = grad_fn(
                    state.params, mb, self._dropout_rng(state.step, index), counts
                )
                return jax.tree.map(jnp.add, carry, (mb_grads, mb_sums)), None

            zeros = (
                jax.tree.map(jnp.zeros_like, state.params),
                {k: jnp.zeros((), jnp.float32) for k in losses.SUM_KEYS},
            )
            (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(n), micro))
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        loss, metrics = losses.loss_from_sums(sums, alpha=self.alpha)
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def _eval_step(self, state: TrainState, batch: Batch) -> dict:
        _, sums = self.loss_fn(state.params, batch, None)
        return losses.loss_from_sums(sums, alpha=self.alpha)[1]

    def _prepare(self, batch: Batch) -> dict[str, jax.Array]:
        if not all(isinstance(v, jax.Array) for v in batch.values()):
            batch = self.partitioner.shard_batch(batch)
        rows = next(iter(batch.values())).shape[0]
        self.partitioner.check_batch_size(rows)
        if rows % (self.num_microbatches * self.partitioner.data_parallel_size):
            raise UserError(
                f"batch size {rows} is not divisible by num_microbatches "
                f"({self.num_microbatches}) x data-parallel size "
                f"({self.partitioner.data_parallel_size})"
            )
        return dict(batch)

    def _compiled_step(self, kind: str, keys: frozenset[str]):
        cache_key = (kind, keys)
        if cache_key not in self._compiled:
            _, shardings = self._layout()
            replicated = self.partitioner.replicated
            batch_sharding = self.partitioner.batch_sharding
            if kind == "train":
                fn = self.partitioner.jit(
                    self._train_step,
                    in_shardings=(shardings, batch_sharding),
                    out_shardings=(shardings, replicated),
                    donate_argnums=(0,),
                )
            else:
                fn = self.partitioner.jit(
                    self._eval_step,
                    in_shardings=(shardings, batch_sharding),
                    out_shardings=replicated,
                )
            self._compiled[cache_key] = fn
        return self._compiled[cache_key]

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
        return self._compiled_step("train", frozenset(batch))(state, batch)

    def eval_step(self, state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        """Loss metrics of `state` on a batch (no dropout, no update)."""
        batch = self._prepare(batch)
        return self._compiled_step("eval", frozenset(batch))(state, batch)


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
