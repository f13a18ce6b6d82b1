"""Subprocess for test_sharded_training: one of N JAX processes on localhost (or the 1-process reference).

Usage: python tests/multiprocess_worker.py OUT_DIR PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS

Each process gets DEVICES_PER_PROCESS fake CPU devices; with NUM_PROCESSES > 1
it joins a jax.distributed cluster (coordinator 127.0.0.1:PORT, gloo CPU
collectives) through the env vars `maybe_initialize_distributed` reads. The
global mesh is (data=total/2, model=2): data parallel across processes,
model parallel inside each. Every process feeds only its own rows of the
global batch (Partitioner.input_shard), trains 3 steps, saves a checkpoint
(orbax, multi-host), restores it, and process 0 writes OUT_DIR/result.npz.
"""
import os
import sys

out_dir, process_id, num_processes, port, local_devices = sys.argv[1:6]
os.environ["XLA_FLAGS"] = (
    f"--xla_force_host_platform_device_count={local_devices} --xla_backend_optimization_level=0"
    " --xla_llvm_disable_expensive_passes=true"
)
if int(num_processes) > 1:
    os.environ["DISTILL_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
    os.environ["DISTILL_NUM_PROCESSES"] = num_processes
    os.environ["DISTILL_PROCESS_ID"] = process_id

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_helpers import make_batch, tiny_config  # noqa: E402

from distill.checkpointing import CheckpointManager  # noqa: E402
from distill.optimizers import make_optimizer  # noqa: E402
from distill.partitioning import Partitioner, maybe_initialize_distributed  # noqa: E402
from distill.trainer import Trainer  # noqa: E402

GLOBAL_BATCH = 8


def main() -> None:
    initialized = maybe_initialize_distributed()
    assert initialized == (int(num_processes) > 1)
    assert jax.process_count() == int(num_processes)
    partitioner = Partitioner(num_partitions=2)
    shard = partitioner.input_shard()
    assert shard.num_shards == jax.process_count() and shard.index == jax.process_index()
    # Dropout off: test_meshes_give_the_same_loss_and_params already shows the masks
    # are mesh-independent, and it halves the step's compile time here (3 processes).
    config = tiny_config(dropout_rate=0.0, num_encoder_layers=1, num_decoder_layers=1)
    trainer = Trainer(config=config, optimizer=make_optimizer("adamw", learning_rate=1e-3),
                      partitioner=partitioner)
    state = trainer.create_state()
    rows = GLOBAL_BATCH // shard.num_shards
    losses = []
    for step in range(3):
        batch = make_batch(step, batch_size=GLOBAL_BATCH, packed=True)
        local = {k: v[shard.index * rows:(shard.index + 1) * rows] for k, v in batch.items()}
        state, metrics = trainer.train_step(state, local)
        losses.append(float(metrics["loss"]))

    manager = CheckpointManager(out_dir, save_every=1)
    manager.save(3, state, {"position": 3})
    manager.wait()
    restored, extra = manager.restore(trainer.abstract_state, trainer.state_shardings)
    manager.close()
    assert extra == {"position": 3}, extra
    params = multihost_utils.process_allgather(state.params, tiled=True)
    again = multihost_utils.process_allgather(restored.params, tiled=True)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    if jax.process_index() == 0:
        flat = {jax.tree_util.keystr(p): np.asarray(v)
                for p, v in jax.tree_util.tree_leaves_with_path(params)}
        np.savez(os.path.join(out_dir, "result.npz"), losses=np.array(losses), **flat)


if __name__ == "__main__":
    main()
