"""Mesh construction, logical-axis rules, param/optimizer/batch shardings, input shards."""
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from distill.errors import UserError
from distill.optimizers import make_optimizer
from distill.partitioning import RULES_1D, Partitioner, maybe_initialize_distributed, rules_2d


def test_single_device_defaults():
    partitioner = Partitioner()
    assert dict(partitioner.mesh.shape) == {"data": 1, "model": 1}
    assert partitioner.logical_axis_rules == RULES_1D
    assert partitioner.input_shard().index == 0 and partitioner.input_shard().num_shards == 1
    batch = partitioner.shard_batch({"decoder_target_tokens": np.ones((3, 5), np.int32)})
    assert isinstance(batch["decoder_target_tokens"], jax.Array)
    assert batch["decoder_target_tokens"].sharding == partitioner.batch_sharding
    with pytest.raises(UserError, match="num_partitions=2"):
        Partitioner(num_partitions=2)
    with pytest.raises(UserError, match="mesh_shape"):
        Partitioner(mesh_shape=(2, 1))


def test_1d_and_2d_rules_map_t5x_axis_names():
    one_d, two_d = Partitioner(), Partitioner(logical_axis_rules=rules_2d())
    assert one_d.logical_sharding(("vocab", "embed")).spec == P("model", None)
    assert one_d.logical_sharding(("embed", "mlp")).spec == P(None, "model")
    assert one_d.logical_sharding(("embed", "joined_kv")).spec == P(None, "model")
    assert one_d.logical_sharding(("heads", "relpos_buckets")).spec == P("model", None)
    assert one_d.logical_sharding(("batch", "length", "embed")).spec == P("data", None, None)
    assert two_d.logical_sharding(("embed", "mlp")).spec == P("data", "model")
    # Activations: batch already took "data", so embed falls back to unsharded.
    assert two_d.logical_sharding(("batch", "length", "embed")).spec == P("data", None, None)


def test_t5_param_and_optimizer_state_shardings():
    from distill.models.t5 import abstract_params

    from trainer_helpers import tiny_config

    partitioner = Partitioner()
    boxed = abstract_params(tiny_config(d_model=256, d_ff=512))
    shardings = partitioner.shardings_for(boxed)["params"]
    specs = {jax.tree_util.keystr(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
    assert specs["['token_embedder']['embedding']"] == P("model", None)
    mlp_out = [s for name, s in specs.items() if "['mlp']['wo']" in name]
    assert mlp_out and all(s == P("model", None) for s in mlp_out)
    assert any(s == P(None, "model") for name, s in specs.items() if "['query']" in name)

    abstract = nn.unbox(boxed)["params"]
    opt = partitioner.optimizer_state_shardings(make_optimizer("adafactor"), abstract, shardings)
    opt_specs = [s.spec for s in jax.tree.leaves(opt)]
    assert P(None, "model") in opt_specs  # unfactored stats follow their params...
    assert P() in opt_specs  # ...factored row/column stats and counts are replicated
    adam = partitioner.optimizer_state_shardings(make_optimizer("adamw"), abstract, shardings)
    is_adam = lambda node: isinstance(node, optax.ScaleByAdamState)  # noqa: E731
    (moments,) = [n for n in jax.tree.leaves(adam, is_leaf=is_adam) if is_adam(n)]
    assert moments.mu["token_embedder"]["embedding"].spec == P("model", None)
    assert moments.nu["token_embedder"]["embedding"].spec == P("model", None)
    assert moments.count.spec == P()


def test_maybe_initialize_distributed(monkeypatch):
    for name in ("DISTILL_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert maybe_initialize_distributed() is False  # one process: nothing to do
    monkeypatch.setenv("DISTILL_COORDINATOR_ADDRESS", "127.0.0.1:1")
    with pytest.raises(UserError, match="DISTILL_NUM_PROCESSES"):
        maybe_initialize_distributed()


EIGHT_DEVICES = textwrap.dedent("""
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from distill.errors import UserError
    from distill.partitioning import Partitioner
    out = {"shapes": {}, "errors": []}
    for n in (1, 2, 4, 8):
        p = Partitioner(num_partitions=n)
        out["shapes"][n] = [p.data_parallel_size, p.model_parallel_size]
        # Model-parallel groups are consecutive devices (one host's, on real pods).
        out.setdefault("groups", {})[n] = [[d.id for d in row] for row in p.mesh.devices]
    for kwargs in (dict(num_partitions=3), dict(mesh_shape=(3, 3)), dict(mesh_shape=(8,))):
        try:
            Partitioner(**kwargs)
        except UserError as err:
            out["errors"].append(str(err))
    p = Partitioner(num_partitions=2)
    try:
        p.shard_batch({"x": np.zeros((6, 3), np.int32)})
    except UserError as err:
        out["errors"].append(str(err))
    batch = p.shard_batch({"x": np.arange(8 * 3, dtype=np.int32).reshape(8, 3)})["x"]
    rows = {d.id: idx[0].indices(8)[:2] for d, idx in batch.sharding.devices_indices_map((8, 3)).items()}
    out["rows"] = rows
    out["equal"] = bool((np.asarray(batch) == np.arange(24).reshape(8, 3)).all())
    print(json.dumps(out))
""")


def test_meshes_and_batch_sharding_on_8_devices():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shapes"] == {"1": [8, 1], "2": [4, 2], "4": [2, 4], "8": [1, 8]}
    assert out["groups"]["2"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    errors = out["errors"]
    assert len(errors) == 4
    assert "num_partitions=3" in errors[0] and "(3, 3)" in errors[1] and "(8,)" in errors[2]
    assert "batch size 6" in errors[3] and "data-parallel size 4" in errors[3]
    # Rows split over the 4 data groups; both devices of a model group hold the same rows.
    assert out["rows"] == {"0": [0, 2], "1": [0, 2], "2": [2, 4], "3": [2, 4],
                           "4": [4, 6], "5": [4, 6], "6": [6, 8], "7": [6, 8]}
    assert out["equal"]
