"""Intervals and paired tests for accuracies, from per-example correctness.

With 200 SVAMP test examples a 2-3 point difference is noise; a reader must
see that. Every run's evaluation writes per-example correctness (the
`"correct"` field of predictions/<split>_step<N>.jsonl); these functions
turn a few seeds' correctness vectors into

- `accuracy_interval`: mean accuracy over seeds with a 95% bootstrap
  interval, resampling test examples and seeds (both vary between what we
  measured and what we want to know);
- `paired_difference`: method A minus method B on the same examples and
  seeds, with a 95% paired-bootstrap interval (the same resampled examples
  and seeds for both methods) and a two-sided paired permutation p-value
  (per example and seed, the two methods' results swapped at random).

Every draw comes from `numpy.random.default_rng(seed)` with a fixed seed, so
a report is reproducible bit for bit.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from distill.errors import UserError

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """An estimate with its interval [low, high] (fractions, not percent)."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """A - B: the interval of the mean difference and the permutation p-value."""

    interval: Interval
    p_value: float
    seeds: int
    examples: int


def _matrix(correct: Sequence[Sequence[float]], what: str) -> np.ndarray:
    """[seeds, examples] float array; UserError for ragged or empty input."""
    rows = [np.asarray(row, dtype=np.float64) for row in correct]
    if not rows or any(len(row) == 0 for row in rows):
        raise UserError(f"{what}: no per-example correctness to resample")
    if len({len(row) for row in rows}) != 1:
        raise UserError(f"{what}: seeds were scored on different numbers of examples "
                        f"({sorted({len(row) for row in rows})}); evaluate every seed on the same split")
    return np.stack(rows)


def _resampled_means(matrix: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Means over resampled seeds and examples, [resamples]."""
    seeds, examples = matrix.shape
    seed_idx = rng.integers(0, seeds, size=(resamples, seeds))
    example_idx = rng.integers(0, examples, size=(resamples, examples))
    # mean over (chosen seeds) x (chosen examples): average the per-seed example means.
    per_seed = matrix[:, example_idx]  # [seeds, resamples, examples]
    per_seed_means = per_seed.mean(axis=2).T  # [resamples, seeds]
    return np.take_along_axis(per_seed_means, seed_idx, axis=1).mean(axis=1)


def _interval(estimate: float, draws: np.ndarray) -> Interval:
    tail = (1.0 - LEVEL) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high))


def accuracy_interval(correct: Sequence[Sequence[float]], *, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = 0) -> Interval:
    """Mean accuracy over seeds ([seeds][examples] of 0/1) with its 95% bootstrap interval."""
    matrix = _matrix(correct, "accuracy interval")
    draws = _resampled_means(matrix, np.random.default_rng(seed), resamples)
    return _interval(matrix.mean(), draws)


def paired_difference(correct_a: Sequence[Sequence[float]], correct_b: Sequence[Sequence[float]], *,
                      resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> PairedDifference:
    """A - B on the same seeds (rows, in the same order) and examples (columns)."""
    a, b = _matrix(correct_a, "paired difference (A)"), _matrix(correct_b, "paired difference (B)")
    if a.shape != b.shape:
        raise UserError(f"paired difference: A is {a.shape[0]} seeds x {a.shape[1]} examples but B is "
                        f"{b.shape[0]} x {b.shape[1]}; compare runs with the same seeds on the same split")
    rng = np.random.default_rng(seed)
    diff = a - b
    draws = _resampled_means(diff, rng, resamples)
    observed = diff.mean()
    signs = rng.choice((-1.0, 1.0), size=(resamples, *diff.shape))
    permuted = np.abs((signs * diff).mean(axis=(1, 2)))
    p_value = (1.0 + np.count_nonzero(permuted >= abs(observed) - 1e-12)) / (1.0 + resamples)
    return PairedDifference(_interval(observed, draws), float(min(p_value, 1.0)), a.shape[0], a.shape[1])
