"""Derived valid split (reference: 10% of train, seed 0) and nested train fractions."""
import json
import math

import numpy as np
import pytest

from data_helpers import write_anli1
from distill.data.datasets import load_examples
from distill.data.splits import derived_valid_split, fraction_subset
from distill.errors import UserError


@pytest.mark.parametrize("n", [800, 9741, 10, 1])
def test_derived_valid_split_matches_reference_membership(n):
    train, valid = derived_valid_split(n)
    # HF Dataset.train_test_split(test_size=0.1, seed=0): default_rng(0) permutation, first ceil(0.1 n) are test.
    permutation = np.random.default_rng(0).permutation(n)
    assert valid == sorted(permutation[:math.ceil(0.1 * n)].tolist())
    assert sorted(train + valid) == list(range(n)) and not set(train) & set(valid)
    assert train == sorted(train) and valid == sorted(valid)


def test_svamp_and_cqa_split_sizes(shared_data_dir):
    assert [len(derived_valid_split(n)[1]) for n in (800, 9741)] == [80, 975]
    valid = load_examples("svamp", "valid", str(shared_data_dir))
    train = load_examples("svamp", "train", str(shared_data_dir))
    assert (len(train), len(valid)) == (720, 80)
    assert not {e["id"] for e in train} & {e["id"] for e in valid}


def test_valid_teacher_outputs_come_from_train_at_same_positions(shared_data_dir):
    valid = load_examples("svamp", "valid", str(shared_data_dir))
    _, positions = derived_valid_split(800)
    assert [e["id"] for e in valid] == [f"svamp-train-{i}" for i in positions]
    blocks = [json.loads((shared_data_dir / "svamp" / "llm" / f"train_CoT_{i}.json").read_text()) for i in (0, 1)]
    assert [e["teacher_raw"] for e in valid] == [blocks[p // 500][p % 500] for p in positions]
    assert any(p >= 500 for p in positions)  # both CoT blocks are exercised


def test_fractions_are_deterministic_nested_and_seeded():
    positions = list(range(0, 2000, 2))
    subsets = {f: fraction_subset(positions, f, seed=0) for f in (0.125, 0.25, 0.5, 1.0)}
    assert [len(s) for s in subsets.values()] == [125, 250, 500, 1000]
    assert set(subsets[0.125]) < set(subsets[0.25]) < set(subsets[0.5]) < set(subsets[1.0])
    assert subsets[0.25] == fraction_subset(positions, 0.25, seed=0) == sorted(subsets[0.25])
    assert fraction_subset(positions, 0.25, seed=1) != subsets[0.25]
    assert fraction_subset(list(range(3)), 0.01) and len(fraction_subset(list(range(3)), 0.01)) == 1


def test_train_fraction_on_real_data_is_nested_and_leaves_valid_alone(shared_data_dir):
    root = str(shared_data_dir)
    ids = {f: [e["id"] for e in load_examples("svamp", "train", root, train_fraction=f, with_teacher=False)]
           for f in (0.125, 0.25, 1.0)}
    assert [len(v) for v in ids.values()] == [90, 180, 720]
    assert set(ids[0.125]) < set(ids[0.25]) < set(ids[1.0])
    assert ids[0.25] == [e["id"] for e in load_examples("svamp", "train", root, train_fraction=0.25,
                                                        with_teacher=False)]
    assert len(load_examples("svamp", "valid", root, train_fraction=0.125, with_teacher=False)) == 80
    assert len(load_examples("svamp", "test", root, train_fraction=0.125, with_teacher=False)) == 200


def test_own_valid_file_means_train_is_whole(tmp_path):
    write_anli1(tmp_path, {"train": 40, "valid": 5, "test": 5})
    assert len(load_examples("anli1", "train", str(tmp_path))) == 40
    assert len(load_examples("anli1", "train", str(tmp_path), train_fraction=0.25)) == 10


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, "half", None])
def test_bad_fraction_is_a_user_error(tmp_path, fraction):
    write_anli1(tmp_path, {"train": 4, "test": 2}, with_cot=False)
    with pytest.raises(UserError, match="train_fraction .* (must be in \\(0, 1\\]|is not a number)"):
        load_examples("anli1", "train", str(tmp_path), train_fraction=fraction)
