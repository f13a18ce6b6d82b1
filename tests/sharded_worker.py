"""Subprocess for test_sharded_training: 3 train steps on several meshes of 8 fake CPU devices.

The last step's batch is re-packed with two encoder rows per decoder row (distill/batch_packing.py,
decoder_group 2: 32 encoder rows, 16 decoder rows, so every data-parallel shard holds whole groups).

Usage: python tests/sharded_worker.py OUT_DIR
Writes OUT_DIR/<mesh name>.npz (flattened final params + per-step losses) and
OUT_DIR/specs.json (the mesh axes each config's params were sharded over).
"""
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_helpers import make_batch, tiny_config  # noqa: E402

from distill.batch_packing import pack_batch  # noqa: E402
from distill.optimizers import make_optimizer  # noqa: E402
from distill.partitioning import Partitioner, rules_2d  # noqa: E402
from distill.trainer import Trainer  # noqa: E402

STEPS = 3
GROUPED = pack_batch(make_batch(STEPS, batch_size=40, input_length=32, target_length=8), row_multiple=8,
                     decoder_group=2)

# name -> (Partitioner kwargs, how the state is made). The 2x4 mesh uses T5X's 2D
# rules (params split over both axes), 8x1 and 4x2 the default 1D rules. "create" runs the sharded
# init (same values on every mesh); "import" places the 1-device initial params
# (Trainer.init_from_params) and saves one init compile per mesh.
CONFIGS = {
    "1x1": (dict(devices=jax.devices()[:1]), "create"),
    "8x1": (dict(num_partitions=1), "import"),
    "4x2": (dict(num_partitions=2), "import"),
    "2x4_2d": (dict(mesh_shape=(2, 4), logical_axis_rules=rules_2d()), "create"),
}


def flatten(tree) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def main(out_dir: str) -> None:
    config = tiny_config(dropout_rate=0.1, num_encoder_layers=1, num_decoder_layers=1)
    specs = {}
    initial_params = None
    for name, (kwargs, init) in CONFIGS.items():
        partitioner = Partitioner(**kwargs)
        trainer = Trainer(
            # eps 1e-5, not 1e-8: Adam's first steps turn a ~1e-9 gradient (float noise that
            # differs with each mesh's reduction order) into a full +-lr update.
            config=config, optimizer=make_optimizer("adamw", learning_rate=1e-3, eps=1e-5),
            partitioner=partitioner, alpha=0.4,
        )
        if init == "create":
            state = trainer.create_state()
            if initial_params is None:
                initial_params = jax.device_get(state.params)
                np.savez(os.path.join(out_dir, "initial.npz"), **flatten(initial_params))
        else:
            state = trainer.init_from_params(initial_params)
        step_losses = []
        for step in range(STEPS):
            batch = make_batch(step, packed=True) if step < STEPS - 1 else GROUPED
            state, metrics = trainer.train_step(state, batch)
            step_losses.append(float(metrics["loss"]))
        np.savez(os.path.join(out_dir, f"{name}.npz"), losses=np.array(step_losses),
                 **flatten(state.params))
        used = sorted({str(axis) for leaf in jax.tree.leaves(state.params)
                       for axis in leaf.sharding.spec if axis is not None})
        specs[name] = {"mesh": dict(partitioner.mesh.shape), "param_axes": used,
                       "opt_axes": sorted({str(axis) for leaf in jax.tree.leaves(state.opt_state)
                                           for axis in leaf.sharding.spec if axis is not None})}
    with open(os.path.join(out_dir, "specs.json"), "w") as f:
        json.dump(specs, f)


if __name__ == "__main__":
    main(sys.argv[1])
