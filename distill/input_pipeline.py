"""SeqIO mixture -> feature converter -> numpy batches, resumable by position.

The training iterator is a pure function of (mixture, lengths, batch size,
packing, seed, shard, position): the mixture is read with a fixed shuffle
seed and repeated forever, so the n-th batch is always the same batch.
Checkpoints store `TrainData.state()` (JSON) and a restarted run rebuilds the
pipeline and `skip`s the batches it already consumed, which makes a killed
and relaunched run see exactly the data an uninterrupted run would. Skipping
re-runs the preprocessing of the skipped examples (seconds for thousands of
batches of these datasets), the price of keeping no tf.data state on disk.

Evaluation reads the label task's valid/test splits once, in order, with
their untokenized text, for decoding and metrics (distill.evaluation).

This is the one module of the training half that imports seqio/TensorFlow
(inside its functions). With `TRAIN_FEED = 'process'` only the feed's child
process calls them (distill/train_feed.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from distill.batch_packing import PACKING_FEATURES, UNPACKED_FEATURES, bucket_length, pack_batch, row_lengths
from distill.errors import UserError


@dataclasses.dataclass(frozen=True)
class TrainDataSpec:
    """What fixes the training batch sequence (stored next to the position)."""

    mixture_or_task_name: str
    task_feature_lengths: tuple[tuple[str, int], ...]
    batch_size: int  # per host
    pack: bool
    seed: int
    shard_index: int = 0
    num_shards: int = 1
    trim_padding: bool = False  # unpacked rows only: cut each batch to a length bucket (see trim_padding)
    pack_batch: bool = False  # unpacked rows only: re-pack each batch's sequences (distill/batch_packing.py)
    row_multiple: int = 1  # pack_batch: row count a multiple of this (data-parallel size x microbatches)
    decoder_group: int = 1  # pack_batch: encoder rows per decoder row (batch_packing.decoder_group)

    def fixed_batch_shapes(self) -> dict[str, tuple[int, int]] | None:
        """Every batch's feature shapes when they do not depend on its sequences, else None.

        seqio's packed rows and untrimmed unpacked rows are [batch, feature length]; trimmed
        and re-packed batches (trim_padding, pack_batch) take their widths from their sequences.
        """
        if not self.pack and (self.trim_padding or self.pack_batch):
            return None
        lengths = dict(self.task_feature_lengths)
        names = UNPACKED_FEATURES + (PACKING_FEATURES if self.pack else ())
        return {name: (self.batch_size, lengths["inputs" if name.startswith("encoder") else "targets"])
                for name in names}

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["task_feature_lengths"] = dict(self.task_feature_lengths)
        return data


class TrainData(Iterator[dict[str, np.ndarray]]):
    """Endless iterator of numpy training batches that knows its position.

    Each batch is the feature converter's dict (encoder_input_tokens
    [b, Li], decoder_target_tokens [b, Lt], decoder_task_ids [b, Lt], ...,
    int32), b = spec.batch_size rows for this host.
    """

    def __init__(self, spec: TrainDataSpec, position: int = 0) -> None:
        self.spec = spec
        self.position = position
        self._iterator = numpy_batches(spec, skip=position)

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.position += 1
        return batch

    def state(self) -> dict[str, Any]:
        return data_state(self.spec, self.position)


def data_state(spec: TrainDataSpec, position: int) -> dict[str, Any]:
    """JSON-able position of a batch stream, saved in every checkpoint's `extra` (checked by `check_data_state`)."""
    return {"data": spec.to_json(), "position": position}


def check_data_state(spec: TrainDataSpec, state: Mapping[str, Any]) -> None:
    """UserError when a checkpoint's data state belongs to another pipeline.

    Resuming with another mixture, lengths, batch size, packing or seed would
    not continue the same data; the message names the first difference.
    """
    saved = dict(state.get("data", {}))
    current = spec.to_json()
    for key in ("mixture_or_task_name", "task_feature_lengths", "batch_size", "pack", "seed", "trim_padding",
                "pack_batch"):
        if key in saved and saved[key] != current[key]:
            raise UserError(
                f"the checkpoint's data pipeline has {key}={saved[key]!r} but this run has {current[key]!r}: "
                "use the same setting, or a new MODEL_DIR with INITIAL_CHECKPOINT_PATH=<old model dir>"
            )


def numpy_batches(spec: TrainDataSpec, *, skip: int) -> Iterator[dict[str, np.ndarray]]:
    """The spec's batches from number `skip` on (the registered tasks' seqio pipeline, then packing or trimming)."""
    import seqio
    import tensorflow as tf

    from distill.feature_converters import StepByStepFeatureConverter

    lengths = dict(spec.task_feature_lengths)
    provider = get_provider(spec.mixture_or_task_name)
    ds = provider.get_dataset(
        sequence_length=lengths,
        split="train",
        shuffle=True,
        seed=spec.seed,
        num_epochs=None,
        shard_info=seqio.ShardInfo(spec.shard_index, spec.num_shards) if spec.num_shards > 1 else None,
        use_cached=False,
    )
    ds = StepByStepFeatureConverter(pack=spec.pack)(ds, lengths)
    ds = ds.batch(spec.batch_size, drop_remainder=True)
    if skip:
        ds = ds.skip(skip)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options).prefetch(2)
    for batch in ds.as_numpy_iterator():
        batch = {name: np.asarray(value, dtype=np.int32) for name, value in batch.items()}
        if spec.pack_batch:
            yield pack_batch(batch, row_multiple=spec.row_multiple, decoder_group=spec.decoder_group)
        else:
            yield trim_padding(batch) if spec.trim_padding else batch


def trim_padding(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An unpacked batch cut to the bucket of its longest input and its longest target.

    The reference code pads each batch to its longest row; padding every row
    to the full feature length (256/256 on SVAMP, whose rows hold ~60 and
    ~15 tokens) computes several times more. Columns past the bucket are
    padding in every row (weight 0, masked keys), so the loss and gradients
    are those of the full batch; power-of-two buckets keep the number of
    compiled step shapes small (at most log2(L/16)+1 per feature).
    """
    inputs = batch["encoder_input_tokens"]
    targets = batch["decoder_target_tokens"]
    width = {"encoder": bucket_length(max(1, int(row_lengths(inputs).max())), inputs.shape[1]),
             "decoder": bucket_length(max(1, int(row_lengths(targets).max())), targets.shape[1])}
    return {name: value[:, :width["encoder" if name.startswith("encoder") else "decoder"]]
            for name, value in batch.items()}


def get_provider(name: str):
    """The registered seqio Task or Mixture `name`; UserError listing the known ones."""
    import seqio

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
        raise UserError(f"unknown task or mixture {name!r}; registered: {', '.join(known) or 'none'}") from None


@dataclasses.dataclass(frozen=True)
class EvalExample:
    """One evaluation example: input text (with its task prefix), its token ids (with EOS), gold target."""

    input: str
    input_ids: tuple[int, ...]
    target: str


def eval_examples(task_name: str, split: str, *, max_examples: int | None = None) -> list[EvalExample]:
    """The task's `split` in file order, as (input text, target text) pairs.

    Text comes from seqio's `*_pretokenized` features, i.e. after the task's
    text preprocessors (the `[label] ` prefix is already there); the ids are
    seqio's own tokenization of it, so decoding does not tokenize again.
    """
    task = get_provider(task_name)
    if split not in task.splits:
        raise UserError(f"task {task_name!r} has no {split!r} split; it has {', '.join(task.splits)}")
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False)
    if max_examples is not None:
        ds = ds.take(max_examples)
    out = []
    for ex in ds.as_numpy_iterator():
        out.append(EvalExample(input=_text(ex["inputs_pretokenized"]), input_ids=tuple(int(i) for i in ex["inputs"]),
                               target=_text(ex["targets_pretokenized"])))
    return out


def prediction_records(examples: Sequence[EvalExample], predictions: Sequence[str]) -> Iterator[dict[str, str]]:
    """The predictions-file records {"input", "target", "prediction"} (evaluation and `distill infer`)."""
    for example, prediction in zip(examples, predictions):
        yield {"input": example.input, "target": example.target, "prediction": prediction}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def count_tokens(batch: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(non-padding input tokens, non-padding target tokens) of a batch."""
    return int(np.count_nonzero(batch["encoder_input_tokens"])), int(np.count_nonzero(batch["decoder_target_tokens"]))
