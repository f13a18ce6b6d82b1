"""Orbax checkpoints of the TrainState plus a JSON `extra`, and preemption handling.

Layout: `<model_dir>/checkpoints/<step>/{state,extra}`. Each step is written
by orbax into a temporary directory and renamed when complete (async by
default: the arrays are copied to host memory, then written in a background
thread while training continues). `latest_step()` only reports steps that
orbax finalized AND that hold both items' metadata, so a checkpoint cut off
by kill -9 or a full disk is never restored.

`extra` is JSON the training loop needs to resume exactly: the data
iterator's position, the rng seed, etc. Together with dropout keys derived
from (seed, step) a resumed run reproduces an uninterrupted one.

Multi-host: every process calls `save`/`restore` with its own shards; orbax
writes each shard once and the metadata from the primary process.
"""
from __future__ import annotations

import logging
import pathlib
import signal
import threading
import types
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from distill.errors import UserError

_ITEMS = ("state", "extra")
_STEP_METADATA = "_CHECKPOINT_METADATA"


def _abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )


def is_complete_step_dir(step_dir: pathlib.Path) -> bool:
    """True when a step directory is a finished checkpoint (not a tmp or half-written one)."""
    if not step_dir.is_dir() or not step_dir.name.isdigit():
        return False
    if not (step_dir / _STEP_METADATA).is_file():
        return False
    return all((step_dir / item).is_dir() and any((step_dir / item).iterdir()) for item in _ITEMS)


def finished_steps(checkpoints_dir: str | pathlib.Path) -> list[int]:
    """The finished checkpoint steps in a checkpoints/ folder, ascending ([] when there is none)."""
    folder = pathlib.Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if is_complete_step_dir(p))


class CheckpointManager:
    """Save every `save_every` steps (and when forced), keep the last `keep`.

    Args:
      model_dir: the run's directory; checkpoints go to `<model_dir>/checkpoints`.
      save_every: period in steps of `save(step, ...)` calls that really save.
      keep: how many finished checkpoints to keep (oldest deleted first).
      async_save: write in a background thread; `wait()`/`close()` before exit.
    """

    def __init__(self, model_dir: str, *, save_every: int, keep: int = 3, async_save: bool = True):
        if save_every < 1:
            raise UserError(f"save_every={save_every} must be at least 1")
        if keep < 1:
            raise UserError(f"keep={keep} must be at least 1")
        self.directory = pathlib.Path(model_dir) / "checkpoints"
        self.save_every = save_every
        self._set_aside_incomplete_steps()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def _set_aside_incomplete_steps(self) -> None:
        """Renames step dirs cut off mid-write to `<step>.incomplete` (kept for inspection).

        Orbax would otherwise count them as steps (for retention and ordering).
        """
        if jax.process_index() == 0 and self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.name.isdigit() and not is_complete_step_dir(path):
                    target = path.with_name(f"{path.name}.incomplete")
                    suffix = 0
                    while target.exists():
                        suffix += 1
                        target = path.with_name(f"{path.name}.incomplete{suffix}")
                    logging.warning("setting aside incomplete checkpoint %s -> %s", path, target.name)
                    path.rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("distill_checkpoint_cleanup")

    def all_steps(self) -> list[int]:
        """Finished checkpoint steps, ascending."""
        steps = []
        for step in self._manager.all_steps():
            if is_complete_step_dir(self.directory / str(step)):
                steps.append(int(step))
            else:
                logging.warning("ignoring incomplete checkpoint %s", self.directory / str(step))
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: Any, extra: dict | None = None, *, force: bool = False) -> bool:
        """Saves `state` (any pytree of jax.Arrays, e.g. TrainState) and `extra` (JSON).

        Saves when `force` or `step % save_every == 0`, and not twice for a
        step. Returns whether a save started (async: it finishes later).
        """
        if not (force or self.should_save(step)):
            return False
        if step in self._manager.all_steps():
            return False
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra or {}))
            ),
            force=True,
        )
        return True

    def keep_copy(self, step: int, folder: str) -> None:
        """Makes `folder` hold exactly a copy of checkpoint `step` (as folder/<step>), beyond retention.

        Waits for the save to finish. Local model dirs only (a remote one keeps
        just its retained steps; a warning says so).
        """
        import shutil
        import tempfile

        from distill.atomic import replace_dir

        self.wait()
        source = self.directory / str(step)
        if "://" in str(folder) or not is_complete_step_dir(source):
            logging.warning("not keeping a copy of checkpoint %s in %s", source, folder)
            return
        parent = pathlib.Path(folder).parent
        staging = tempfile.mkdtemp(prefix=".best-", dir=parent)
        try:
            shutil.copytree(source, pathlib.Path(staging) / str(step))
            replace_dir(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def restore(self, abstract_state: Any, shardings: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, extra) of `step` (default: latest), placed straight into `shardings`.

        Args:
          abstract_state: the state's structure with shape/dtype leaves
            (Trainer.abstract_state).
          shardings: matching NamedSharding tree (Trainer.state_shardings); may
            differ from the mesh the checkpoint was written with.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise UserError(f"no finished checkpoint in {self.directory}")
        elif step not in self.all_steps():
            raise UserError(f"no finished checkpoint for step {step} in {self.directory}")
        target = _abstract_with_shardings(abstract_state, shardings)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["extra"] or {})

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def restore_params(path: str, abstract_params: Any, shardings: Any) -> Any:
    """Params only from one of our checkpoints (for INITIAL_CHECKPOINT_PATH).

    `path` is a model dir, its `checkpoints/` dir (latest step is used) or one
    `checkpoints/<step>` dir. The optimizer state in the checkpoint is not read.
    """
    root = pathlib.Path(path)
    if is_complete_step_dir(root):
        step_dir = root
    else:
        folder = root / "checkpoints" if (root / "checkpoints").is_dir() else root
        steps = finished_steps(folder)
        if not steps:
            raise UserError(f"{path} holds no finished checkpoint (<model_dir>/checkpoints/<step>)")
        step_dir = folder / str(steps[-1])
    target = {"params": _abstract_with_shardings(abstract_params, shardings)}
    restore_args = jax.tree.map(
        lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape,
                                          dtype=leaf.dtype),
        target,
    )
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            step_dir / "state",
            args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
        )
    return restored["params"]


class PreemptionGuard:
    """Context manager turning SIGTERM (TPU/VM preemption) into a "save and stop" flag.

        with PreemptionGuard() as guard:
            for step in ...:
                state, metrics = trainer.train_step(state, batch)
                if guard.should_stop():
                    manager.save(step, state, extra, force=True); manager.wait(); break

    On several processes `should_stop()` is a collective (all processes must
    call it at the same step) and is True everywhere once any process got the
    signal, so all of them save the same step.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self._flag = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        logging.warning("received signal %d: saving a checkpoint and stopping", signum)
        self._flag.set()

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def triggered(self) -> bool:
        """Whether this process received the signal (no communication)."""
        return self._flag.is_set()

    def should_stop(self) -> bool:
        """Whether any process received the signal (a collective on several processes)."""
        if jax.process_count() == 1:
            return self.triggered
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.triggered, dtype=np.int32))
        return bool(np.asarray(flags).any())

