"""Shared by the training-run tests: a micro model, gin flags for it, run launchers.

The micro model (d_model 32, one layer each side) keeps every compiled
program small, so a test run costs seconds; dropout stays on so resume tests
also check the dropout keys.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_GIN = "experiments/svamp/step_by_step_gt_tiny.gin"

MICRO_MODEL = dict(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_heads=2, num_encoder_layers=1,
                   num_decoder_layers=1, dropout_rate=0.1)

# --gin flags turning the svamp tiny experiment into a seconds-long micro run.
MICRO_FLAGS = (
    "--gin.VOCAB_SIZE=512",
    "--gin.T5Config.d_model=32",
    "--gin.T5Config.d_kv=8",
    "--gin.T5Config.d_ff=64",
    "--gin.T5Config.num_heads=2",
    "--gin.T5Config.num_encoder_layers=1",
    "--gin.T5Config.num_decoder_layers=1",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 64}",
    "--gin.BATCH_SIZE=4",
    "--gin.TRAIN_FRACTION=0.125",
    "--gin.train.eval_max_examples=4",
    "--gin.train.max_decode_length=4",
    "--gin.train.num_rationale_examples=0",
    "--gin.train.async_checkpointing=False",
    "--gin.train.log_period=2",
    "--gin.EVAL_PERIOD=0",
)


def micro_config(**overrides: Any):
    from distill.models.t5 import T5Config

    return T5Config(**{**MICRO_MODEL, **overrides})


def train_vocabulary(data_dir: pathlib.Path, out_dir: pathlib.Path) -> str:
    """A 512-piece SVAMP vocabulary (deterministic), shared by runs that must match."""
    from distill.vocab import train_vocabulary_for_dataset

    return train_vocabulary_for_dataset("svamp", str(data_dir), size=512, out_path=str(out_dir / "spm.model"))


def subprocess_env(data_dir: pathlib.Path, *, devices: int = 1, cache_dir: pathlib.Path | None = None) -> dict:
    env = dict(os.environ, DISTILL_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(REPO_ROOT))
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if cache_dir is not None:  # share compiled programs between the runs of one test
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def train_command(model_dir: pathlib.Path, vocab: str, steps: int, *extra: str) -> list[str]:
    """`python -m distill.train` on the micro svamp run, as the README writes it."""
    return [sys.executable, "-m", "distill.train", f"--gin_file=gin_configs/{TINY_GIN}",
            f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", f"--gin.VOCABULARY_PATH='{vocab}'",
            *MICRO_FLAGS, *extra]


def run(command: Sequence[str], env: dict, timeout: float = 900, cwd: pathlib.Path = REPO_ROOT
        ) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def final_params(model_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """The latest checkpoint's params as {path: numpy array} (restored on one device)."""
    import flax.linen as nn
    import jax

    from distill import checkpointing
    from distill.models.t5 import T5Config, abstract_params
    from distill.partitioning import Partitioner

    run_info = json.loads((model_dir / "run.json").read_text())
    boxed = abstract_params(T5Config(**run_info["model_config"]))
    partitioner = Partitioner(devices=jax.devices()[:1])
    params = checkpointing.restore_params(str(model_dir), nn.unbox(boxed)["params"],
                                          partitioner.shardings_for(boxed)["params"])
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def latest_step(model_dir: pathlib.Path) -> int | None:
    from distill.checkpointing import is_complete_step_dir

    steps = [int(p.name) for p in (model_dir / "checkpoints").glob("*") if is_complete_step_dir(p)]
    return max(steps) if steps else None
