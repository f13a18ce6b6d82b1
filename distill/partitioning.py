"""Device mesh, logical-axis rules and the one place steps are jax.jit-ed.

T5X's partitioning model on modern JAX: a 2D mesh with axes ("data", "model");
parameters and activations carry *logical* axis names (embed, mlp, heads,
vocab, ...) that a rule table maps to mesh axes; `jax.jit` with
`in_shardings`/`out_shardings` (what pjit became) compiles the step for that
layout. `num_partitions` is T5X's model-parallel submesh size: the "model"
axis gets that many devices and the "data" axis the rest.

Multi-host: call `maybe_initialize_distributed()` first thing; every process
builds the same global mesh, reads its own slice of the global batch
(`Partitioner.input_shard()` -> seqio.ShardInfo numbers) and
`shard_batch` assembles the global arrays with
`jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distill.errors import UserError

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

MESH_AXES = ("data", "model")

# T5X's `standard_logical_axis_rules()` with 1D parameter partitioning: the
# large matrices are split along their vocab/mlp/heads dimension over "model";
# "embed" (d_model) stays whole; the batch is split over "data".
RULES_1D: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("length", None),
    ("layers", None),
    ("stack", None),
    ("mlp_activations", None),
)


def rules_2d() -> tuple[tuple[str, str | None], ...]:
    """T5X's 2D parameter partitioning: `embed` is also split over "data".

    Params are then sharded over every device (ZeRO-3-like memory use) at the
    cost of all-gathers in the step. Activations whose batch axis already uses
    "data" fall through to the `("embed", None)` rule (flax takes the first
    rule whose mesh axis is still free), so they keep embed unsharded.
    """
    rules = list(RULES_1D)
    index = rules.index(("embed", None))
    rules.insert(index, ("embed", "data"))
    return tuple(rules)


def maybe_initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` when launched as one of many processes.

    Detected from the environment: an explicit coordinator
    (`JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` + `JAX_PROCESS_ID`, or the
    `DISTILL_*` equivalents), a TPU pod slice (`TPU_WORKER_HOSTNAMES` listing
    several hosts, or `MEGASCALE_COORDINATOR_ADDRESS`), SLURM with several tasks,
    or Open MPI with several ranks. Must run before any other JAX call.
    Returns True when it initialized the distributed runtime.
    """
    env = os.environ
    if _distributed_is_initialized():
        return False
    address = env.get("DISTILL_COORDINATOR_ADDRESS") or env.get("JAX_COORDINATOR_ADDRESS")
    if address:
        count = env.get("DISTILL_NUM_PROCESSES") or env.get("JAX_NUM_PROCESSES")
        index = env.get("DISTILL_PROCESS_ID") or env.get("JAX_PROCESS_ID")
        if count is None or index is None:
            raise UserError(
                f"coordinator address {address!r} is set but the number of processes or "
                "this process's id is not: set DISTILL_NUM_PROCESSES and DISTILL_PROCESS_ID"
            )
        jax.distributed.initialize(address, num_processes=int(count), process_id=int(index))
        return True
    tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    auto = (
        len(tpu_hosts) > 1
        or "MEGASCALE_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )
    if auto:
        jax.distributed.initialize()  # JAX detects the cluster itself.
        return True
    return False


def _distributed_is_initialized() -> bool:
    try:  # the public API has no "is initialized" query
        from jax._src import distributed

        return distributed.global_state.client is not None
    except (ImportError, AttributeError):
        return False


@dataclasses.dataclass(frozen=True)
class InputShard:
    """Which slice of the global batch this process reads (seqio.ShardInfo(index, num_shards))."""

    index: int
    num_shards: int


class Partitioner:
    """A ("data", "model") device mesh plus the logical-axis rules for it.

    Args:
      num_partitions: model-parallel size (devices on the "model" axis); the
        data axis gets `device_count // num_partitions`.
      mesh_shape: explicit (data, model) sizes instead of num_partitions.
      logical_axis_rules: rule table (default: `RULES_1D`; see `rules_2d()`).
      devices: devices to use (default: all of `jax.devices()`).
      compiler_options: XLA options for every step compiled here, e.g.
        {"xla_backend_optimization_level": 0} to compile faster (tests, CPU).
    """

    def __init__(
        self,
        num_partitions: int = 1,
        mesh_shape: Sequence[int] | None = None,
        logical_axis_rules: LogicalRules | None = None,
        devices: Sequence[jax.Device] | None = None,
        compiler_options: Mapping[str, Any] | None = None,
    ):
        devices = list(devices) if devices is not None else jax.devices()
        count = len(devices)
        if mesh_shape is not None:
            shape = tuple(int(n) for n in mesh_shape)
            if len(shape) != 2 or shape[0] * shape[1] != count:
                raise UserError(
                    f"mesh_shape {tuple(mesh_shape)} does not fit {count} devices: give "
                    f"(data, model) sizes whose product is {count}"
                )
        else:
            if num_partitions < 1 or count % num_partitions:
                raise UserError(
                    f"num_partitions={num_partitions} does not divide the {count} devices: "
                    "use a divisor of the device count"
                )
            shape = (count // num_partitions, num_partitions)
        self.mesh = Mesh(_device_grid(shape, devices), MESH_AXES)
        self.logical_axis_rules = tuple(logical_axis_rules or RULES_1D)
        self.compiler_options = dict(compiler_options or {})

    @property
    def data_parallel_size(self) -> int:
        return self.mesh.shape["data"]

    @property
    def model_parallel_size(self) -> int:
        return self.mesh.shape["model"]

    @property
    def batch_sharding(self) -> NamedSharding:
        """Batch arrays [batch, length]: rows split over "data", replicated over "model"."""
        return NamedSharding(self.mesh, PartitionSpec("data"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def logical_sharding(self, logical_axes: Sequence[str | None]) -> NamedSharding:
        """NamedSharding for one array given its logical axis names."""
        return nn.logical_to_mesh_sharding(
            PartitionSpec(*logical_axes), self.mesh, self.logical_axis_rules
        )

    def shardings_for(self, boxed_tree: Any) -> Any:
        """NamedSharding tree for a (possibly abstract) tree of boxed variables.

        `boxed_tree` is what `jax.eval_shape(model.init, ...)` returns: leaves
        wrapped in `nn.LogicallyPartitioned`; unboxed leaves are replicated.
        The result has the structure of `nn.unbox(boxed_tree)`.
        """
        specs = nn.get_partition_spec(boxed_tree)
        return nn.logical_to_mesh_sharding(specs, self.mesh, self.logical_axis_rules)

    def optimizer_state_shardings(
        self, optimizer: optax.GradientTransformation, abstract_params: Any, param_shardings: Any
    ) -> Any:
        """Shardings for `optimizer.init(params)` that follow the param shardings.

        Per-parameter statistics with the parameter's shape (Adam's mu/nu,
        unfactored Adafactor's v) get the parameter's sharding; reduced-shape
        statistics (Adafactor's factored row/column vectors) and scalars
        (step counts) are replicated: they are small.
        """
        abstract_state = jax.eval_shape(optimizer.init, abstract_params)

        def follow(leaf, param, sharding):
            if getattr(leaf, "shape", None) == getattr(param, "shape", None):
                return sharding
            return self.replicated

        return optax.tree_utils.tree_map_params(
            optimizer,
            follow,
            abstract_state,
            abstract_params,
            param_shardings,
            transform_non_params=lambda _: self.replicated,
        )

    def check_batch_size(self, global_batch_size: int) -> None:
        if global_batch_size % self.data_parallel_size:
            raise UserError(
                f"batch size {global_batch_size} is not divisible by the data-parallel size "
                f"{self.data_parallel_size} (mesh {dict(self.mesh.shape)}): pick a multiple of it"
            )

    def input_shard(self) -> InputShard:
        """This process's slice of the global batch: pass to seqio.ShardInfo(index, num_shards).

        Processes whose devices hold the same rows of the batch (model axis
        spanning hosts) read the same shard.
        """
        rows = self._process_rows(global_batch_size=self.data_parallel_size)
        distinct = sorted(set(rows.values()))
        return InputShard(index=distinct.index(rows[jax.process_index()]), num_shards=len(distinct))

    def _process_rows(self, global_batch_size: int) -> dict[int, tuple[int, int]]:
        """Per process: the (start, stop) rows of a [global_batch_size] batch its devices hold."""
        index_map = self.batch_sharding.devices_indices_map((global_batch_size,))
        spans: dict[int, tuple[int, int]] = {}
        for device, (rows,) in index_map.items():
            start, stop, _ = rows.indices(global_batch_size)
            old = spans.get(device.process_index, (start, stop))
            spans[device.process_index] = (min(old[0], start), max(old[1], stop))
        return spans

    def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Per-host numpy batch {name: [local_batch, length]} -> global jax.Arrays.

        Single process: the batch is the global batch. Several processes: each
        passes its own `input_shard()` slice, and the global batch is
        `local_batch * input_shard().num_shards` rows.
        """
        out = {}
        shard = self.input_shard() if jax.process_count() > 1 else InputShard(0, 1)
        for name, value in batch.items():
            value = np.asarray(value)
            global_shape = (value.shape[0] * shard.num_shards, *value.shape[1:])
            self.check_batch_size(global_shape[0])
            out[name] = jax.make_array_from_process_local_data(
                self.batch_sharding, value, global_shape
            )
        return out

    def jit(
        self,
        fn: Callable,
        in_shardings: Any,
        out_shardings: Any,
        donate_argnums: int | Sequence[int] = (),
    ) -> MeshJitted:
        """`jax.jit` with shardings, traced under this mesh and rule table.

        The mesh and rules are active while tracing so the model's
        `nn.with_logical_constraint` calls on activations resolve.
        """
        compiled = jax.jit(
            fn,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            donate_argnums=donate_argnums,
            compiler_options=self.compiler_options or None,
        )
        return MeshJitted(compiled, self.mesh, self.logical_axis_rules)

    def __repr__(self) -> str:
        return f"Partitioner(mesh={dict(self.mesh.shape)}, processes={jax.process_count()})"


class MeshJitted:
    """A jitted function that traces (on a call or `precompile`) under one mesh and rule table."""

    def __init__(self, jitted: Any, mesh: Mesh, rules: Any):
        self._jitted = jitted
        self._mesh = mesh
        self._rules = rules

    def __call__(self, *args):
        with jax.set_mesh(self._mesh), nn.logical_axis_rules(self._rules):
            return self._jitted(*args)

    def precompile(self, *args) -> None:
        """Compile for these arguments' shapes now; the next call with the same shapes reuses it.

        Nothing is executed and nothing donated, so the caller can release the
        compiler's memory (distill/heap.py) before the first run allocates its own.
        """
        with jax.set_mesh(self._mesh), nn.logical_axis_rules(self._rules):
            self._jitted.lower(*args).compile()


def _device_grid(shape: tuple[int, int], devices: list[jax.Device]) -> np.ndarray:
    """[data, model] array of devices: model-parallel groups stay inside a host."""
    if devices[0].platform == "tpu":
        from jax.experimental import mesh_utils

        try:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError) as err:
            logging.warning("TPU-aware mesh failed (%s); using device order", err)
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return np.array(ordered, dtype=object).reshape(shape)
