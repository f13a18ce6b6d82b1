"""Optimizers and learning-rate schedules for fine-tuning the student.

Two families, each with its reference defaults:
- "adamw": what the paper's code used (HF `Seq2SeqTrainer`): lr 5e-5,
  betas (0.9, 0.999), eps 1e-8, weight decay 0.0, global-norm clipping at 1.0,
  and (HF's default scheduler) linear decay to 0 -> schedule="linear_decay".
- "adafactor": T5X's fine-tuning setup: lr 1e-3 constant, factored second
  moments, no momentum, update clipping threshold 1.0, decay rate 0.8,
  updates scaled by parameter RMS.

Schedules take the step count the optimizer has seen (= TrainState.step), so
a resumed run continues the schedule where it stopped.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from distill.errors import UserError

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("constant", "linear_warmup", "linear_decay", "rsqrt", "cosine")
DEFAULT_LEARNING_RATE = {"adamw": 5e-5, "adafactor": 1e-3}
DEFAULT_GRAD_CLIP_NORM = {"adamw": 1.0, "adafactor": None}


def make_schedule(
    learning_rate: float,
    schedule: str = "constant",
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
) -> optax.Schedule:
    """step -> learning rate.

    constant:      lr
    linear_warmup: lr * min(1, step / warmup_steps)
    linear_decay:  linear warmup, then linear decay to 0 at total_steps (HF default)
    rsqrt:         lr / sqrt(max(step, warmup_steps, 1))  (T5X rsqrt_decay; lr is the
                   numerator, so the peak is lr / sqrt(warmup_steps))
    cosine:        linear warmup, then cosine decay to 0 at total_steps
    """
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool):
        raise UserError(f"learning_rate={learning_rate!r} must be a number (--gin.LEARNING_RATE=5e-5)")
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise UserError(f"{name}={value!r} must be an integer (e.g. --gin.TRAIN_STEPS=1000, not a string)")
    if warmup_steps < 0:
        raise UserError(f"warmup_steps={warmup_steps} is negative: use 0 or more")
    if schedule in ("linear_decay", "cosine") and (total_steps is None or total_steps <= warmup_steps):
        raise UserError(
            f"schedule {schedule!r} needs total_steps > warmup_steps (got total_steps="
            f"{total_steps}, warmup_steps={warmup_steps})"
        )

    def warmup(step):
        if warmup_steps == 0:
            return jnp.ones_like(step, dtype=jnp.float32)
        return jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)

    def fn(step):
        step = jnp.asarray(step)
        if schedule == "constant":
            return jnp.full_like(step, learning_rate, dtype=jnp.float32)
        if schedule == "linear_warmup":
            return learning_rate * warmup(step)
        if schedule == "rsqrt":
            return learning_rate * jax.lax.rsqrt(
                jnp.maximum(step.astype(jnp.float32), max(warmup_steps, 1))
            )
        progress = jnp.clip(
            (step.astype(jnp.float32) - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0
        )
        if schedule == "linear_decay":
            decay = 1.0 - progress
        else:
            decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return learning_rate * jnp.where(step < warmup_steps, warmup(step), decay)

    return fn


def make_optimizer(
    name: str = "adamw",
    learning_rate: float | None = None,
    schedule: str = "constant",
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    factored: bool = True,
    momentum: float | None = None,
) -> optax.GradientTransformation:
    """An optax optimizer with the reference defaults of its family (module docstring).

    Args:
      name: "adamw" or "adafactor".
      learning_rate: peak rate (the rsqrt numerator); None = the family default.
      schedule / warmup_steps / total_steps: see `make_schedule`.
      weight_decay: decoupled weight decay (AdamW; Adafactor's weight_decay_rate),
        applied to matrices only (not layer-norm scales).
      grad_clip_norm: global-norm gradient clipping; None = the family default
        (AdamW 1.0, Adafactor none), 0 = off.
      b1/b2/eps: AdamW moments. decay_rate/clipping_threshold/
        multiply_by_parameter_scale/factored/momentum: Adafactor (T5X names).
    """
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    if learning_rate is not None and (not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool)):
        raise UserError(f"learning_rate={learning_rate!r} must be a number (--gin.LEARNING_RATE=5e-5)")
    lr = DEFAULT_LEARNING_RATE[name] if learning_rate is None else float(learning_rate)
    if lr <= 0:
        raise UserError(f"learning_rate={learning_rate} must be positive")
    sched = make_schedule(lr, schedule, warmup_steps=warmup_steps, total_steps=total_steps)
    clip = DEFAULT_GRAD_CLIP_NORM[name] if grad_clip_norm is None else grad_clip_norm

    def matrices(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    if name == "adamw":
        tx = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=matrices)
    else:
        tx = optax.adafactor(
            sched,
            decay_rate=decay_rate,
            clipping_threshold=clipping_threshold,
            multiply_by_parameter_scale=multiply_by_parameter_scale,
            factored=factored,
            momentum=momentum,
            weight_decay_rate=weight_decay or None,
            weight_decay_mask=matrices,
        )
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx
