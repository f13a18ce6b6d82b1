"""The feature converter that turns task examples into THE training batch format.

Task examples (from `distill.tasks`) look like

    {"inputs": [7, 8, 1], "targets": [3, 9, 1], "task_id": 0, ...}

where `task_id` is a scalar (distill.losses.LABEL_TASK = 0, RATIONALE_TASK = 1). The
step-by-step loss (distill/losses.py) normalizes each task's cross-entropy
by that task's own token count, so the task id must reach the trainer per
target token, also when a label example and a rationale example are packed
into one row. `StepByStepFeatureConverter` is seqio's `EncDecFeatureConverter`
plus one model feature, `decoder_task_ids [batch, targets_length]`.

Packed example (task feature lengths inputs 10, targets 7):

    in:  {"inputs": [7, 8, 5, 1], "targets": [3, 9, 1], "task_id": 0}
         {"inputs": [8, 4, 9, 3, 1], "targets": [4, 1], "task_id": 1}
    out: encoder_input_tokens  [7, 8, 5, 1, 8, 4, 9, 3, 1, 0]
         encoder_segment_ids   [1, 1, 1, 1, 2, 2, 2, 2, 2, 0]
         encoder_positions     [0, 1, 2, 3, 0, 1, 2, 3, 4, 0]
         decoder_target_tokens [3, 9, 1, 4, 1, 0, 0]
         decoder_input_tokens  [0, 3, 9, 0, 4, 0, 0]
         decoder_loss_weights  [1, 1, 1, 1, 1, 0, 0]
         decoder_segment_ids   [1, 1, 1, 2, 2, 0, 0]
         decoder_positions     [0, 1, 2, 0, 1, 0, 0]
         decoder_task_ids      [0, 0, 0, 1, 1, 0, 0]

Unpacked rows have only the first four keys and `decoder_task_ids`. All
features are int32; padding is 0 everywhere (so padding has task id 0 but
loss weight 0: always combine the two). Batches re-packed by
distill/batch_packing.py (PACK_BATCH) may have fewer decoder rows than encoder
rows: decoder row j then holds the targets of encoder rows [j * G, (j + 1) * G),
G = ceil(encoder rows / decoder rows), segment ids numbered across those rows.
"""
from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

TASK_ID_FEATURE = "task_id"
# The per-token task ids while they travel through packing/padding. seqio's
# packer trims every sequence at its count of non-zero tokens, so label-task
# ids (0) would vanish; they travel as task_id + 1 and are shifted back after.
_SHIFTED_TASK_IDS = "targets_task_ids"


class StepByStepFeatureConverter(seqio.EncDecFeatureConverter):
    """`EncDecFeatureConverter` that also emits `decoder_task_ids [b, Lt]`.

    Use as `StepByStepFeatureConverter(pack=True)` with
    `seqio.get_dataset(name, {"inputs": Li, "targets": Lt}, converter)`.
    The task feature lengths stay {"inputs", "targets"}; every example must
    carry a scalar int32 `task_id` (all tasks from `distill.tasks` do).
    Decoder inputs are the targets shifted right with start id 0, restarting
    at every packed segment (seqio's `make_autoregressive_inputs` with the
    segment ids).
    """

    MODEL_FEATURES = {
        **seqio.EncDecFeatureConverter.MODEL_FEATURES,
        "decoder_task_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        spec = ds.element_spec.get(TASK_ID_FEATURE)
        if spec is None or spec.shape.rank != 0 or not spec.dtype.is_integer:
            raise ValueError(
                f"StepByStepFeatureConverter needs a scalar integer {TASK_ID_FEATURE!r} feature in every "
                f"example (got {spec}); use the tasks registered by distill.tasks"
            )

        def with_token_task_ids(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            task_id = tf.cast(ex[TASK_ID_FEATURE], tf.int32)
            return {
                "inputs": ex["inputs"],
                "targets": ex["targets"],
                _SHIFTED_TASK_IDS: tf.fill(tf.shape(ex["targets"]), task_id + 1),
            }

        ds = ds.map(with_token_task_ids, num_parallel_calls=tf.data.AUTOTUNE)
        lengths = {**task_feature_lengths, _SHIFTED_TASK_IDS: task_feature_lengths["targets"]}
        ds = self._pack_or_pad(ds, lengths)
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        converted = dict(super()._convert_example(features))
        is_target = tf.not_equal(features["targets"], 0)
        converted["decoder_task_ids"] = tf.where(is_target, features[_SHIFTED_TASK_IDS] - 1, 0)
        return converted

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        lengths["decoder_task_ids"] = task_feature_lengths["targets"]
        return lengths
