"""Subprocess for test_t5x_model: one StepByStepTrainer step, 2 microbatches, 4 fake CPU devices (2 data x 2 model).

Usage: python tests/t5x_sharded_worker.py OUT.npz   (T5X on PYTHONPATH)
Writes the 1-device, 1-batch loss and gradients of StepByStepModel.loss_fn
and, for the same params and batch, the sharded microbatched step's summed
loss, its label/rationale metrics and the gradients it applied (SGD with
learning rate 1, so gradient = params before - params after).
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import t5x_helpers  # noqa: E402
from t5x import optimizers, partitioning, train_state as train_state_lib  # noqa: E402

from distill import t5x_model  # noqa: E402


def flatten(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def main(out: str) -> None:
    assert jax.device_count() == 4, jax.devices()
    model = t5x_helpers.tiny_model(optimizer=optimizers.sgd(learning_rate=1.0))
    batch = t5x_helpers.mixed_batch()
    variables = model.get_initial_variables(
        jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()}, {k: v.dtype for k, v in batch.items()})
    rng = jax.random.PRNGKey(1)

    grad_fn = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))
    (ref_loss, _), ref_grads = grad_fn(variables["params"], t5x_model.with_global_token_counts(batch), rng)

    partitioner = partitioning.PjitPartitioner(num_partitions=2,
                                               logical_axis_rules=partitioning.standard_logical_axis_rules())
    # T5X puts every CPU device on the model axis (partitioning.get_cpu_mesh); ask for 2 x 2.
    partitioner.__dict__["mesh"] = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    state = train_state_lib.FlaxOptimTrainState.create(model.optimizer_def, variables)
    axes = partitioner.get_mesh_axes(state)
    trainer = t5x_model.StepByStepTrainer(
        model=model, train_state=state, partitioner=partitioner, eval_names=[], summary_dir=None,
        train_state_axes=axes, rng=rng, learning_rate_fn=lambda step: 1.0, num_microbatches=2)
    before = jax.device_get(variables["params"])  # the step donates the state's buffers
    new_state, metrics = trainer._partitioned_train_step(state, batch)
    applied = jax.tree.map(lambda b, a: b - np.asarray(a), before, jax.device_get(new_state.params))
    np.savez(
        out,
        ref_loss=np.asarray(ref_loss),
        loss_total=np.asarray(metrics["loss"].total),  # summed over the 2 microbatches
        label_loss=np.asarray(metrics["label_loss"].compute()),
        rationale_loss=np.asarray(metrics["rationale_loss"].compute()),
        label_tokens=np.asarray(metrics["label_tokens"].total),
        rationale_tokens=np.asarray(metrics["rationale_tokens"].total),
        **{f"ref{k}": v for k, v in flatten(ref_grads).items()},
        **{f"applied{k}": v for k, v in flatten(applied).items()},
    )


if __name__ == "__main__":
    main(sys.argv[1])
