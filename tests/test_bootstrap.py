"""Bootstrap intervals cover the truth at about the nominal rate; paired tests see real differences."""
import numpy as np
import pytest

from distill.bootstrap import accuracy_interval, paired_difference
from distill.errors import UserError


def _simulate(rng, examples=200, seeds=3, p_a=0.60, p_b=0.55):
    """Per-example difficulty shared by both methods (so the pair is correlated), fresh draws per seed."""
    difficulty = rng.normal(size=examples)
    base = 1 / (1 + np.exp(-(difficulty + np.log(p_b / (1 - p_b)))))
    lift = p_a - p_b
    a = rng.random((seeds, examples)) < np.clip(base + lift, 0, 1)
    b = rng.random((seeds, examples)) < base
    return a.astype(float), b.astype(float), float(np.mean(np.clip(base + lift, 0, 1)) - np.mean(base))


def test_paired_interval_covers_the_true_difference_at_about_95_percent():
    """200 seeded trials; the truth is each trial's expected difference over the example population."""
    rng = np.random.default_rng(123)
    covered = 0
    trials = 200
    population = rng.normal(size=200_000)
    for trial in range(trials):
        difficulty = rng.choice(population, size=200)
        base = 1 / (1 + np.exp(-(difficulty + np.log(0.55 / 0.45))))
        p_a = np.clip(base + 0.05, 0, 1)
        a = (rng.random((3, 200)) < p_a).astype(float)
        b = (rng.random((3, 200)) < base).astype(float)
        truth_base = 1 / (1 + np.exp(-(population + np.log(0.55 / 0.45))))
        truth = float(np.mean(np.clip(truth_base + 0.05, 0, 1)) - np.mean(truth_base))
        result = paired_difference(a, b, resamples=400, seed=trial)
        covered += result.interval.low <= truth <= result.interval.high
    assert 0.90 <= covered / trials <= 0.99


def test_accuracy_interval_brackets_the_mean_and_is_reproducible():
    rng = np.random.default_rng(0)
    a, _, _ = _simulate(rng)
    first, second = accuracy_interval(a, seed=7), accuracy_interval(a, seed=7)
    assert first == second
    assert first.estimate == pytest.approx(a.mean()) and first.low < first.estimate < first.high
    assert 0.05 < first.high - first.low < 0.2  # 600 draws of a ~0.6 coin


def test_a_large_difference_is_significant_and_no_difference_is_not():
    rng = np.random.default_rng(1)
    a, b, _ = _simulate(rng, p_a=0.8, p_b=0.5)
    big = paired_difference(a, b)
    assert big.interval.excludes_zero() and big.p_value < 0.01
    same = paired_difference(a, a.copy())
    assert same.interval.estimate == 0.0 and not same.interval.excludes_zero() and same.p_value == 1.0


def test_mismatched_runs_are_refused():
    with pytest.raises(UserError, match="same seeds on the same split"):
        paired_difference([[1, 0, 1]], [[1, 0]])
    with pytest.raises(UserError, match="different numbers of examples"):
        accuracy_interval([[1, 0, 1], [1]])
