"""Optimizer families, their reference defaults, schedules and clipping."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distill.errors import UserError
from distill.optimizers import make_optimizer, make_schedule


def test_schedules_values():
    constant = make_schedule(1e-3)
    assert float(constant(0)) == pytest.approx(1e-3) and float(constant(10**6)) == pytest.approx(1e-3)
    warm = make_schedule(1e-3, "linear_warmup", warmup_steps=10)
    assert [float(warm(s)) for s in (0, 5, 10, 50)] == pytest.approx([0, 5e-4, 1e-3, 1e-3])
    linear = make_schedule(1.0, "linear_decay", warmup_steps=10, total_steps=110)
    assert [float(linear(s)) for s in (5, 10, 60, 110, 200)] == pytest.approx([0.5, 1, 0.5, 0, 0])
    # HF's default: no warmup, linear decay from the first step.
    assert float(make_schedule(1.0, "linear_decay", total_steps=4)(1)) == pytest.approx(0.75)
    rsqrt = make_schedule(1.0, "rsqrt", warmup_steps=100)
    assert [float(rsqrt(s)) for s in (0, 100, 400)] == pytest.approx([0.1, 0.1, 0.05])
    assert np.isfinite(float(make_schedule(1.0, "rsqrt")(0)))
    cosine = make_schedule(1.0, "cosine", warmup_steps=10, total_steps=110)
    assert [float(cosine(s)) for s in (5, 10, 60, 110)] == pytest.approx([0.5, 1, 0.5, 0], abs=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="sgd"),
        dict(name="adamw", schedule="exp"),
        dict(name="adamw", schedule="cosine"),  # needs total_steps
        dict(name="adamw", schedule="linear_decay", warmup_steps=10, total_steps=10),
        dict(name="adamw", learning_rate=0.0),
    ],
)
def test_bad_settings_raise_user_error(kwargs):
    with pytest.raises(UserError):
        make_optimizer(**kwargs)


def _run(tx, params, grads, steps=1):
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_adafactor_has_t5x_finetuning_defaults():
    params = {"kernel": jnp.ones((256, 160)), "scale": jnp.ones((160,))}
    grads = jax.tree.map(lambda p: jnp.linspace(-2, 3, p.size).reshape(p.shape), params)
    ours, state = _run(make_optimizer("adafactor"), params, grads, steps=3)
    reference = optax.adafactor(
        1e-3, decay_rate=0.8, clipping_threshold=1.0, multiply_by_parameter_scale=True,
        factored=True, momentum=None, min_dim_size_to_factor=128,
    )
    expected, _ = _run(reference, params, grads, steps=3)
    for key in params:
        np.testing.assert_allclose(ours[key], expected[key], rtol=1e-6)
    # Factored second moments: a row and a column vector for the big matrix, no momentum.
    shapes = sorted(leaf.shape for leaf in jax.tree.leaves(state))
    assert (256,) in shapes and (160,) in shapes and (256, 160) not in shapes


def test_adamw_defaults_follow_hf_trainer():
    params = {"kernel": jnp.ones((4, 4)), "scale": jnp.ones((4,))}
    grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)  # global norm 200 -> clipped
    ours, _ = _run(make_optimizer("adamw"), params, grads, steps=2)
    clipped = jax.tree.map(lambda g: g / optax.global_norm(grads), grads)
    expected, _ = _run(optax.adamw(5e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
                       params, clipped, steps=2)
    for key in params:
        np.testing.assert_allclose(ours[key], expected[key], rtol=1e-6)
        assert float(jnp.abs(ours[key] - 1).max()) == pytest.approx(2 * 5e-5, rel=1e-3)


def test_weight_decay_skips_vectors_and_clipping_can_be_off():
    params = {"kernel": jnp.ones((4, 4)), "scale": jnp.ones((4,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    decayed, _ = _run(make_optimizer("adamw", learning_rate=0.1, weight_decay=0.5), params, zeros)
    np.testing.assert_allclose(decayed["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(decayed["scale"], 1.0)
    # With eps=1 Adam's first step is g / (|g| + 1): it shows whether g was clipped.
    grads = {"kernel": jnp.full((4, 4), 3.0), "scale": jnp.full((4,), 3.0)}  # norm 3 * sqrt(20)
    norm = float(optax.global_norm(grads))
    unclipped, _ = _run(make_optimizer("adamw", learning_rate=1.0, eps=1.0, grad_clip_norm=0.0),
                        params, grads)
    clipped, _ = _run(make_optimizer("adamw", learning_rate=1.0, eps=1.0, grad_clip_norm=1.0),
                      params, grads)
    np.testing.assert_allclose(1 - unclipped["scale"], 3 / 4, rtol=1e-5)
    np.testing.assert_allclose(1 - clipped["scale"], (3 / norm) / (3 / norm + 1), rtol=1e-5)


def test_schedule_follows_the_optimizer_step_count():
    tx = make_optimizer("adamw", learning_rate=1.0, schedule="linear_warmup", warmup_steps=4,
                        grad_clip_norm=0.0)
    params = {"w": jnp.zeros((2, 2))}
    grads = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    moves = []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        moves.append(float(-updates["w"][0, 0]))
    # lr(0)=0, lr(1)=0.25, lr(2)=0.5 times Adam's ~unit step.
    assert moves == pytest.approx([0.0, 0.25, 0.5], rel=1e-3)
