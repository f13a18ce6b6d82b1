"""distill.t5x_model under upstream T5X: the paper's loss over the global batch, also microbatched and sharded.

Needs T5X (DISTILL_T5X_SRC, see tests/t5x_helpers.py); skips without it,
except the check that importing the module never imports T5X.
"""
import subprocess
import sys

import numpy as np
import pytest

import t5x_helpers

ALPHA, Z_LOSS, SMOOTHING = 0.3, 1e-4, 0.1


def test_importing_the_module_never_imports_t5x():
    code = ("import sys, distill, distill.t5x_model as m; assert 't5x' not in sys.modules, 't5x imported'; "
            "assert m.TOKEN_COUNTS_FEATURE; "
            "exec('try:\\n m.NoSuchName\\nexcept AttributeError: pass\\nelse: raise SystemExit(1)')")
    result = subprocess.run([sys.executable, "-c", code], env=t5x_helpers.subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def setup():
    """(model, params, batch, logits [8, 10, vocab] as numpy) for the fixed mixed batch."""
    t5x_helpers.require_t5x()
    import jax

    model = t5x_helpers.tiny_model(alpha=ALPHA, z_loss=Z_LOSS, label_smoothing=SMOOTHING)
    batch = t5x_helpers.mixed_batch()
    variables = model.get_initial_variables(
        jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()}, {k: v.dtype for k, v in batch.items()})
    logits = np.asarray(jax.jit(model._compute_logits)(variables["params"], batch, None))
    return model, variables["params"], batch, logits


def test_loss_is_the_papers_formula(setup):
    import jax

    from distill import losses, t5x_model
    from distill.errors import UserError

    model, params, batch, logits = setup
    want, want_label, want_rationale = t5x_helpers.numpy_loss(
        logits, batch, alpha=ALPHA, z_loss=Z_LOSS, label_smoothing=SMOOTHING)
    ours, _ = losses.step_by_step_loss(logits, batch, alpha=ALPHA, z_loss=Z_LOSS, label_smoothing=SMOOTHING)
    assert float(ours) == pytest.approx(want, rel=1e-6)

    loss_fn = jax.jit(model.loss_fn)
    for features, rng in ((batch, None), (t5x_model.with_global_token_counts(batch), jax.random.PRNGKey(3))):
        loss, metrics = loss_fn(params, features, rng)  # eval path, then the train path (dropout rate 0)
        assert float(loss) == pytest.approx(want, rel=1e-6)
        assert float(metrics["label_loss"].compute()) == pytest.approx(want_label, rel=1e-6)
        assert float(metrics["rationale_loss"].compute()) == pytest.approx(want_rationale, rel=1e-6)
        weights, tasks = batch["decoder_loss_weights"], batch["decoder_task_ids"]
        assert float(metrics["label_tokens"].total) == (weights * (tasks == 0)).sum() == 18
        assert float(metrics["rationale_tokens"].total) == (weights * (tasks == 1)).sum() == 24
        assert {"loss", "accuracy", "z_loss", "cross_ent_loss"} <= set(metrics)  # T5X's own, still there
    with pytest.raises(ValueError, match="StepByStepTrainer"):
        loss_fn(params, batch, jax.random.PRNGKey(3))  # training without the global counts is refused
    with pytest.raises(UserError, match="alpha"):
        t5x_helpers.tiny_model(alpha=1.5)


def test_microbatched_sharded_step_matches_one_batch_on_one_device(setup, tmp_path):
    """StepByStepTrainer, num_microbatches=2, 2 data x 2 model fake CPU devices (tests/t5x_sharded_worker.py)."""
    _, _, batch, logits = setup
    out = tmp_path / "out.npz"
    worker = t5x_helpers.__file__.replace("t5x_helpers.py", "t5x_sharded_worker.py")
    result = subprocess.run([sys.executable, worker, str(out)], env=t5x_helpers.subprocess_env(XLA_FLAGS=(
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got = np.load(out)
    want, want_label, want_rationale = t5x_helpers.numpy_loss(
        logits, batch, alpha=ALPHA, z_loss=Z_LOSS, label_smoothing=SMOOTHING)
    assert float(got["ref_loss"]) == pytest.approx(want, rel=1e-6)
    assert float(got["loss_total"]) == pytest.approx(want, rel=1e-5)
    assert float(got["label_loss"]) == pytest.approx(want_label, rel=1e-5)
    assert float(got["rationale_loss"]) == pytest.approx(want_rationale, rel=1e-5)
    assert (float(got["label_tokens"]), float(got["rationale_tokens"])) == (18.0, 24.0)
    # Per-microbatch counts (what a plain T5X trainer would divide by) give a different loss.
    halves = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()} for i in range(2)]
    local = sum(t5x_helpers.numpy_loss(logits[i * 4:(i + 1) * 4], h, alpha=ALPHA, z_loss=Z_LOSS,
                                       label_smoothing=SMOOTHING)[0] for i, h in enumerate(halves))
    assert abs(local - want) > 0.5
    refs = [k for k in got.files if k.startswith("ref[")]
    assert len(refs) > 20
    for key in refs:
        np.testing.assert_allclose(got["applied" + key[3:]], got[key], rtol=1e-4, atol=1e-6, err_msg=key)
