"""StepByStepFeatureConverter: per-token task ids, loss weights and segments, packed and not."""
import numpy as np
import pytest
import tensorflow as tf

from distill.feature_converters import StepByStepFeatureConverter
from tasks_helpers import read_all

LABEL_A = {"inputs": [7, 8, 1], "targets": [3, 9, 1], "task_id": 0}
RATIONALE_B = {"inputs": [5, 4, 6, 1], "targets": [11, 12, 13, 1], "task_id": 1}
LABEL_C = {"inputs": [9, 1], "targets": [4, 1], "task_id": 0}
RATIONALE_D = {"inputs": [3, 3, 3, 3, 3, 1], "targets": [6, 6, 6, 6, 6, 1], "task_id": 1}

SIGNATURE = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32),
             "task_id": tf.TensorSpec([], tf.int32)}


def _dataset(examples, signature=SIGNATURE):
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)


def test_packed_label_and_rationale_examples():
    rows = read_all(StepByStepFeatureConverter(pack=True)(
        _dataset([LABEL_A, RATIONALE_B, LABEL_C, RATIONALE_D]), {"inputs": 10, "targets": 10}))
    assert len(rows) == 2
    assert rows[0] == {
        "encoder_input_tokens": [7, 8, 1, 5, 4, 6, 1, 9, 1, 0],
        "encoder_segment_ids": [1, 1, 1, 2, 2, 2, 2, 3, 3, 0],
        "encoder_positions": [0, 1, 2, 0, 1, 2, 3, 0, 1, 0],
        "decoder_target_tokens": [3, 9, 1, 11, 12, 13, 1, 4, 1, 0],
        "decoder_input_tokens": [0, 3, 9, 0, 11, 12, 13, 0, 4, 0],
        "decoder_loss_weights": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        "decoder_segment_ids": [1, 1, 1, 2, 2, 2, 2, 3, 3, 0],
        "decoder_positions": [0, 1, 2, 0, 1, 2, 3, 0, 1, 0],
        "decoder_task_ids": [0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
    }
    assert rows[1] == {
        "encoder_input_tokens": [3, 3, 3, 3, 3, 1, 0, 0, 0, 0],
        "encoder_segment_ids": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        "encoder_positions": [0, 1, 2, 3, 4, 5, 0, 0, 0, 0],
        "decoder_target_tokens": [6, 6, 6, 6, 6, 1, 0, 0, 0, 0],
        "decoder_input_tokens": [0, 6, 6, 6, 6, 6, 0, 0, 0, 0],
        "decoder_loss_weights": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        "decoder_segment_ids": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        "decoder_positions": [0, 1, 2, 3, 4, 5, 0, 0, 0, 0],
        "decoder_task_ids": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    }


def test_packing_two_label_examples_keeps_both():
    """Label ids are 0 like padding; they must still cover the label tokens (no lost segment)."""
    rows = read_all(StepByStepFeatureConverter(pack=True)(_dataset([LABEL_A, LABEL_C]), {"inputs": 8, "targets": 6}))
    assert rows == [{
        "encoder_input_tokens": [7, 8, 1, 9, 1, 0, 0, 0], "encoder_segment_ids": [1, 1, 1, 2, 2, 0, 0, 0],
        "encoder_positions": [0, 1, 2, 0, 1, 0, 0, 0],
        "decoder_target_tokens": [3, 9, 1, 4, 1, 0], "decoder_input_tokens": [0, 3, 9, 0, 4, 0],
        "decoder_loss_weights": [1, 1, 1, 1, 1, 0], "decoder_segment_ids": [1, 1, 1, 2, 2, 0],
        "decoder_positions": [0, 1, 2, 0, 1, 0], "decoder_task_ids": [0, 0, 0, 0, 0, 0],
    }]


def test_unpacked_rows_have_no_segment_keys():
    rows = read_all(StepByStepFeatureConverter(pack=False)(
        _dataset([LABEL_A, RATIONALE_B, RATIONALE_D]), {"inputs": 6, "targets": 6}))
    assert [sorted(row) for row in rows] == [[
        "decoder_input_tokens", "decoder_loss_weights", "decoder_target_tokens", "decoder_task_ids",
        "encoder_input_tokens"]] * 3
    a, b, d = rows
    assert a == {"encoder_input_tokens": [7, 8, 1, 0, 0, 0], "decoder_target_tokens": [3, 9, 1, 0, 0, 0],
                 "decoder_input_tokens": [0, 3, 9, 1, 0, 0], "decoder_loss_weights": [1, 1, 1, 0, 0, 0],
                 "decoder_task_ids": [0, 0, 0, 0, 0, 0]}
    assert b["decoder_task_ids"] == [1, 1, 1, 1, 0, 0] and b["decoder_loss_weights"] == [1, 1, 1, 1, 0, 0]
    assert b["decoder_input_tokens"] == [0, 11, 12, 13, 1, 0]
    assert d["decoder_target_tokens"] == [6, 6, 6, 6, 6, 1] and d["decoder_task_ids"] == [1] * 6
    assert d["encoder_input_tokens"] == [3, 3, 3, 3, 3, 1]


def test_packed_task_ids_follow_their_segments_on_many_examples():
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(60):
        task_id = int(rng.integers(0, 2))
        n_in, n_tgt = int(rng.integers(1, 12)), int(rng.integers(1, 4 if task_id == 0 else 14))
        examples.append({"inputs": list(rng.integers(3, 50, n_in)) + [1],
                         "targets": list(rng.integers(3, 50, n_tgt)) + [1], "task_id": task_id})
    rows = read_all(StepByStepFeatureConverter(pack=True)(_dataset(examples), {"inputs": 24, "targets": 16}))
    # Every example lands whole and in order, so segments map back to examples one by one.
    segments = [(row, s) for row in rows for s in range(1, max(row["decoder_segment_ids"]) + 1)]
    assert len(segments) == len(examples)
    for (row, s), example in zip(segments, examples):
        where = np.array(row["decoder_segment_ids"]) == s
        assert np.array(row["decoder_target_tokens"])[where].tolist() == example["targets"]
        assert set(np.array(row["decoder_task_ids"])[where].tolist()) == {example["task_id"]}
        assert set(np.array(row["decoder_loss_weights"])[where].tolist()) == {1}
        inputs = np.array(row["decoder_input_tokens"])[where].tolist()
        assert inputs == [0] + example["targets"][:-1]
    for row in rows:
        padding = np.array(row["decoder_segment_ids"]) == 0
        assert not np.array(row["decoder_task_ids"])[padding].any()
        assert not np.array(row["decoder_loss_weights"])[padding].any()


def test_missing_task_id_is_a_clear_error():
    signature = {k: v for k, v in SIGNATURE.items() if k != "task_id"}
    examples = [{k: v for k, v in LABEL_A.items() if k != "task_id"}]
    with pytest.raises(ValueError, match="scalar integer 'task_id'"):
        StepByStepFeatureConverter(pack=True)(_dataset(examples, signature), {"inputs": 8, "targets": 8})
