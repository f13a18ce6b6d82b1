"""Subprocess for test_resume: a small training loop that resumes from its latest checkpoint.

Usage: python tests/resume_worker.py MODEL_DIR TOTAL_STEPS SAVE_EVERY [PAUSE_AFTER]

The loop is the shape `distill.train` uses: restore (state + data position
from `extra`) or create, then step / maybe save / check the preemption guard.
With PAUSE_AFTER it prints "paused at step K" after step K and waits (for
SIGKILL, or SIGTERM which makes it save step K and exit). At the end it writes
MODEL_DIR/final.npz. Runs on 2 fake CPU devices with the params split over
the model axis, so checkpoints are restored straight into a sharded layout.
"""
import os
import sys
import time

os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
    " --xla_llvm_disable_expensive_passes=true"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_helpers import make_batch, tiny_config  # noqa: E402

from distill.checkpointing import CheckpointManager, PreemptionGuard  # noqa: E402
from distill.optimizers import make_optimizer  # noqa: E402
from distill.partitioning import Partitioner  # noqa: E402
from distill.trainer import Trainer  # noqa: E402

SEED = 17


class SyntheticData:
    """Deterministic batches; `position` (batches consumed) is all it needs to resume."""

    def __init__(self, position: int = 0):
        self.position = position

    def __next__(self) -> dict:
        batch = make_batch(SEED * 1000 + self.position, packed=True)
        self.position += 1
        return batch


def main(model_dir: str, total_steps: int, save_every: int, pause_after: int | None) -> int:
    config = tiny_config(dropout_rate=0.1, num_encoder_layers=1, num_decoder_layers=1)
    trainer = Trainer(config=config, optimizer=make_optimizer("adafactor"),
                      partitioner=Partitioner(num_partitions=2), seed=SEED)
    manager = CheckpointManager(model_dir, save_every=save_every, keep=2)
    if manager.latest_step() is None:
        state, data = trainer.create_state(), SyntheticData()
    else:
        state, extra = manager.restore(trainer.abstract_state, trainer.state_shardings)
        data = SyntheticData(extra["data_position"])
        print(f"resumed from step {int(state.step)} at data position {data.position}", flush=True)
    step = int(state.step)
    with PreemptionGuard() as guard:
        while step < total_steps:
            state, metrics = trainer.train_step(state, next(data))
            step = int(state.step)
            extra = {"data_position": data.position, "seed": SEED}
            manager.save(step, state, extra)
            print(f"step {step} loss {float(metrics['loss']):.6f}", flush=True)
            if step == pause_after:
                print(f"paused at step {step}", flush=True)
                while not guard.triggered:
                    time.sleep(0.05)
            if guard.should_stop():
                manager.save(step, state, extra, force=True)
                manager.close()
                print(f"preempted: saved step {step}", flush=True)
                return 0
    manager.save(step, state, {"data_position": data.position, "seed": SEED}, force=True)
    manager.close()
    flat = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))}
    np.savez(os.path.join(model_dir, "final.npz"), **flat)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[0], int(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else None))
