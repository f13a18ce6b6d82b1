"""Deterministic split arithmetic: the derived valid split and train fractions.

Both work on positions into a split file and return sorted positions, so the
examples keep their file order and teacher outputs (aligned with the file)
can be picked at the same positions.

Valid split without a valid file: the reference code calls Hugging Face
`Dataset.train_test_split(test_size=0.1, seed=0)`, which permutes positions
with `np.random.default_rng(0)`, takes the first ceil(0.1 * n) as valid and
the rest as train. `derived_valid_split` reproduces that membership exactly
(for svamp's 800 training examples: 80 valid, 720 train).

Train fraction: a prefix of a seeded permutation of the (remaining) train
positions, floor(fraction * n) long (at least 1), so for one seed the 12.5%
subset is contained in the 25% subset, which is in the 50% subset.
Unlike the reference (which subsamples before carving out valid), valid
does not depend on the fraction, so every fraction is scored on the same
valid examples.
"""
import math

import numpy as np

from distill.errors import UserError

VALID_FRACTION = 0.1
VALID_SEED = 0


def derived_valid_split(num_examples: int) -> tuple[list[int], list[int]]:
    """(train positions, valid positions) carved from a train file of num_examples."""
    permutation = np.random.default_rng(VALID_SEED).permutation(num_examples)
    num_valid = math.ceil(VALID_FRACTION * num_examples)
    return sorted(permutation[num_valid:].tolist()), sorted(permutation[:num_valid].tolist())


def check_fraction(fraction: float) -> float:
    """The fraction as a float; UserError unless 0 < fraction <= 1."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise UserError(f"train_fraction {fraction!r} is not a number; use e.g. 0.125, 0.25, 0.5 or 1.0") from None
    if not 0.0 < value <= 1.0:
        raise UserError(f"train_fraction {fraction!r} must be in (0, 1]; use e.g. 0.125, 0.25, 0.5 or 1.0")
    return value


def fraction_subset(positions: list[int], fraction: float, seed: int = 0) -> list[int]:
    """A deterministic, nested subset of `positions` (sorted), floor(fraction*n) long."""
    fraction = check_fraction(fraction)
    if fraction == 1.0 or not positions:
        return list(positions)
    count = max(1, math.floor(fraction * len(positions)))
    order = np.random.default_rng(seed).permutation(len(positions))[:count]
    return [positions[i] for i in sorted(order.tolist())]
