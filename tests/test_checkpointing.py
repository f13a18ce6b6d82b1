"""CheckpointManager: periodic saves, retention, exact restore, incomplete steps, preemption guard."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from distill.checkpointing import CheckpointManager, PreemptionGuard, restore_params
from distill.errors import UserError
from distill.trainer import TrainState

TX = optax.adamw(1e-3)


def _state(step: int) -> TrainState:
    rng = np.random.default_rng(step)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)},
              "scale": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=TX.init(params))


def _layout():
    abstract = jax.eval_shape(lambda: _state(0))
    sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1),
                                               ("data", "model")), PartitionSpec())
    return abstract, jax.tree.map(lambda _: sharding, abstract)


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_every_keep_and_exact_restore(tmp_path):
    abstract, shardings = _layout()
    with CheckpointManager(str(tmp_path), save_every=2, keep=2) as manager:
        assert manager.latest_step() is None
        saved = [step for step in range(1, 7) if manager.save(step, _state(step), {"position": step})]
        assert saved == [2, 4, 6]
        assert manager.save(7, _state(7), {"position": 7}, force=True)  # e.g. the final step
        assert not manager.save(7, _state(7), {}, force=True)  # never twice
        manager.wait()
        assert manager.all_steps() == [6, 7]
        state, extra = manager.restore(abstract, shardings)
        assert extra == {"position": 7}
        _assert_equal(state, _state(7))
        assert all(leaf.sharding == shardings.step for leaf in jax.tree.leaves(state))
        older, extra = manager.restore(abstract, shardings, step=6)
        _assert_equal(older, _state(6))
        assert extra == {"position": 6}
        with pytest.raises(UserError, match="step 4"):
            manager.restore(abstract, shardings, step=4)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "7"]


def test_incomplete_checkpoints_never_become_latest(tmp_path):
    abstract, shardings = _layout()
    with CheckpointManager(str(tmp_path), save_every=1) as manager:
        manager.save(3, _state(3), {"position": 3})
    # A step dir cut off mid-write (no metadata, empty item) and an orbax tmp dir.
    half = tmp_path / "checkpoints" / "9"
    (half / "state").mkdir(parents=True)
    (half / "extra").mkdir()
    (tmp_path / "checkpoints" / "12.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    with CheckpointManager(str(tmp_path), save_every=1, keep=2) as manager:
        assert manager.latest_step() == 3
        state, extra = manager.restore(abstract, shardings)
        _assert_equal(state, _state(3))
        assert extra == {"position": 3}
        with pytest.raises(UserError, match="step 9"):
            manager.restore(abstract, shardings, step=9)
        # The run goes on from 3; the cut-off step is set aside, not deleted, not counted.
        assert manager.save(4, _state(4), {"position": 4})
        manager.wait()
        assert manager.all_steps() == [3, 4]
    assert (tmp_path / "checkpoints" / "9.incomplete" / "state").is_dir()


def test_restore_without_checkpoint_is_a_user_error(tmp_path):
    abstract, shardings = _layout()
    with CheckpointManager(str(tmp_path), save_every=1, async_save=False) as manager:
        with pytest.raises(UserError, match="no finished checkpoint"):
            manager.restore(abstract, shardings)
    with pytest.raises(UserError):
        CheckpointManager(str(tmp_path), save_every=0)


def test_restore_params_reads_only_the_params(tmp_path):
    abstract, shardings = _layout()
    with CheckpointManager(str(tmp_path), save_every=1) as manager:
        manager.save(5, _state(5), {})
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "5"):
        params = restore_params(str(path), abstract.params, shardings.params)
        _assert_equal(params, _state(5).params)
    with pytest.raises(UserError, match="no finished checkpoint"):
        restore_params(str(tmp_path / "elsewhere"), abstract.params, shardings.params)


def test_preemption_guard_turns_sigterm_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.triggered and guard.should_stop()
    assert signal.getsignal(signal.SIGTERM) is before
