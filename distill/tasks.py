"""SeqIO tasks and mixtures of Distilling Step-by-Step (label task, rationale task).

For a dataset and a name prefix `p` (default: the dataset name) one call of
`register_tasks` registers

    task     <p>_label_gt           "[label] <input>"     -> gold label          task_id 0
    task     <p>_label_llm          "[label] <input>"     -> teacher label       task_id 0
    task     <p>_rationale          "[rationale] <input>" -> teacher rationale   task_id 1
    mixture  <p>_step_by_step_gt    <p>_label_gt  + <p>_rationale
    mixture  <p>_step_by_step_llm   <p>_label_llm + <p>_rationale

The paper's baselines need no mixture: standard fine-tuning trains on
`<p>_label_gt`, standard distillation on `<p>_label_llm`.

- Splits are seqio's `train`, `validation`, `test` (`validation` reads
  distill's `valid`: the dataset's own valid file or 10% of train).
- `<p>_label_llm` trains on teacher labels (examples whose teacher output
  failed to parse are left out) but evaluates on gold labels, so its
  validation/test metrics measure the real task. `<p>_rationale` keeps only
  examples with a parsed teacher rationale, in every split.
- Label tasks carry `distill.metrics.metric_fn_for(dataset)` (accuracy, or
  equation accuracy for svamp); predictions are only whitespace-stripped.
- Mixture rates are each task's train example count, so an epoch of the
  mixture shows every example once in each task.
- Every example has a scalar int32 `task_id` (0 label, 1 rationale) that
  `distill.feature_converters.StepByStepFeatureConverter` spreads over the
  target tokens; `StepByStepMixture` keeps it through mixing (a plain
  `seqio.Mixture` keeps only the output features).

Sources: with `tfds_dir`, examples come from the TFDS dataset prepared by
`distill data build --out tfds_dir` through `seqio.TfdsDataSource` (per-host
file sharding via `seqio.ShardInfo` on multi-host runs); without it, from
`distill.data.datasets.load_examples` through a `seqio.FunctionDataSource`.
Both give the same examples (tests/test_tfds_build.py checks it).

Importing this module registers nothing; `register_from_environment` (run
by importing distill/registered_tasks.py, the module T5X's
MIXTURE_OR_TASK_MODULE names) registers every dataset found under
`$DISTILL_DATA_DIR`.
"""
from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from distill.data import tfds_builder
from distill.errors import UserError
from distill.feature_converters import TASK_ID_FEATURE
from distill.metrics import strip_whitespace
from distill.task_prefixes import TASK_PREFIXES, checked_prefixes, environment_prefixes
from distill.task_specs import MIXTURES, TaskConfig, task_configs

logger = logging.getLogger(__name__)

DEFAULT_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
SPLITS = tfds_builder.SPLITS  # seqio split -> distill.data split
TEACHER_FIELDS = ("teacher_label", "rationale")
_VALID_PREFIX = re.compile(r"^[\w.:]+$")


# ------------------------------------------------------------------ sources


def _records_dataset(records: Sequence[dict]) -> tf.data.Dataset:
    """Records (`tfds_builder.to_record`) as a dataset with the TFDS features' dtypes."""
    columns = {field: tf.constant([r[field] for r in records], tf.string) for field in tfds_builder.TEXT_FIELDS}
    columns["parse_ok"] = tf.constant([r["parse_ok"] for r in records], tf.bool)
    return tf.data.Dataset.from_tensor_slices(columns)


class _ExampleLoader:
    """`load_examples` for one dataset, as records, loaded once per split on first use."""

    def __init__(self, dataset: str, data_dir: str, train_fraction: float):
        self.dataset, self.data_dir, self.train_fraction = dataset, data_dir, train_fraction
        self._records: dict[str, tuple[dict, ...]] = {}
        self._train_ids: tuple[str, ...] | None = None

    def records(self, split: str) -> tuple[dict, ...]:
        from distill.data import datasets

        if split not in self._records:
            fraction = self.train_fraction if split == "train" else 1.0
            examples = datasets.load_examples(self.dataset, SPLITS[split], self.data_dir, train_fraction=fraction)
            self._records[split] = tuple(tfds_builder.to_record(ex) for ex in examples)
        return self._records[split]

    def train_ids(self) -> tuple[str, ...]:
        """Ids of the train-fraction subset (the one definition of it lives in distill.data)."""
        from distill.data import datasets

        if self._train_ids is None:
            examples = datasets.load_examples(self.dataset, "train", self.data_dir,
                                              train_fraction=self.train_fraction, with_teacher=False)
            self._train_ids = tuple(str(ex["id"]) for ex in examples)
        return self._train_ids

    def dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory "file"; the task's shuffle buffer shuffles examples
        return _records_dataset(self.records(split))


def _keep_train_ids(ds: tf.data.Dataset, ids: Sequence[str]) -> tf.data.Dataset:
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(ids), tf.string), tf.ones([len(ids)], tf.int32)),
        default_value=0,
    )
    return ds.filter(lambda ex: tf.equal(table.lookup(ex["id"]), 1))


class TargetSource(seqio.DataSource):
    """A task's view of the dataset's records: the right target per split, unusable examples out.

    Wraps the records source (TFDS or function) and passes `shard_info`
    through, so file-level sharding of a TFDS source is kept.
    `{"id", "input", "label", "rationale", "teacher_label", "parse_ok"}` ->
    `{"id", "input", "target"}`.
    """

    def __init__(self, records: seqio.DataSource, config: TaskConfig, train_filter: Callable | None = None):
        super().__init__(splits=tuple(SPLITS), caching_permitted=True)
        self._records, self._config, self._train_filter = records, config, train_filter
        self._counts: dict[str, int] = {}

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return self._records.supports_arbitrary_sharding

    def list_shards(self, split: str) -> Sequence[str]:
        return self._records.list_shards(split)

    def __repr__(self) -> str:
        return f"TargetSource({self._records!r}, target={self._config.train_target}/{self._config.eval_target})"

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # unused, as in seqio's sources
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; one of {list(SPLITS)}")
        ds = self._records.get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        if split == "train" and self._train_filter is not None:
            ds = self._train_filter(ds)
        target = self._config.train_target if split == "train" else self._config.eval_target
        needs_parse = target in TEACHER_FIELDS

        def usable(ex):
            has_target = tf.strings.length(tf.strings.strip(ex[target])) > 0
            return tf.logical_and(has_target, ex["parse_ok"]) if needs_parse else has_target

        ds = ds.filter(usable)
        return ds.map(lambda ex: {"id": ex["id"], "input": ex["input"], "target": ex[target]},
                      num_parallel_calls=tf.data.AUTOTUNE)

    def num_input_examples(self, split: str) -> int:
        """Examples this task yields for `split` (counted once, then remembered)."""
        if split not in self._counts:
            ds = self.get_dataset(split=split, shuffle=False)
            self._counts[split] = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
        return self._counts[split]


# ------------------------------------------------------------- preprocessors


@seqio.map_over_dataset
def to_inputs_and_targets(ex: Mapping[str, tf.Tensor], prefix: str, task_id: int) -> dict[str, tf.Tensor]:
    """Text features of one task example.

    prefix="[label] ", task_id=0:
    `{"id": "7", "input": "2 + 3?", "target": "( 2.0 + 3.0 )"}`
    -> `{"id": "7", "inputs": "[label] 2 + 3?", "targets": "( 2.0 + 3.0 )", "task_id": 0}`
    """
    return {
        "id": ex["id"],
        "inputs": tf.strings.join([prefix, ex["input"]]),
        "targets": ex["target"],
        TASK_ID_FEATURE: tf.constant(task_id, tf.int32),
    }


# ------------------------------------------------------------- registration


class StepByStepMixture(seqio.Mixture):
    """A `seqio.Mixture` that keeps each example's `task_id` (not an output feature)."""

    def get_task_dataset(self, task, output_feature_keys, *args, **kwargs):
        return super().get_task_dataset(task, set(output_feature_keys) | {TASK_ID_FEATURE}, *args, **kwargs)


def rate_num_train_examples(task: seqio.Task) -> float:
    """Mixing rate: the train examples the task yields (after its filters), counted once."""
    return float(task.num_input_examples("train"))


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """inputs/targets tokenized with `vocabulary`, EOS appended."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def _records_source(dataset: str, data_dir: str, name: str, train_fraction: float,
                    tfds_dir: str | None) -> tuple[seqio.DataSource, Callable | None]:
    """The records source and, for TFDS with a train fraction, the train-subset filter."""
    loader = _ExampleLoader(dataset, data_dir, train_fraction)
    if tfds_dir is None:
        return seqio.FunctionDataSource(loader.dataset_fn, splits=tuple(SPLITS)), None
    source = seqio.TfdsDataSource(
        tfds_data_dir=tfds_builder.builder_dir(tfds_dir, name), splits=tuple(SPLITS), read_only=True
    )
    if train_fraction >= 1.0:
        return source, None
    return source, lambda ds: _keep_train_ids(ds, loader.train_ids())


def _as_vocabulary(vocabulary: seqio.Vocabulary | str) -> seqio.Vocabulary:
    if isinstance(vocabulary, seqio.Vocabulary):
        return vocabulary
    from distill.vocab import load_vocabulary

    return load_vocabulary(str(vocabulary))


def register_tasks(*, dataset: str, data_dir: str, vocabulary: seqio.Vocabulary | str, train_fraction: float = 1.0,
                   label_prefix: str = TASK_PREFIXES["label"], rationale_prefix: str = TASK_PREFIXES["rationale"],
                   name_prefix: str | None = None, tfds_dir: str | None = None) -> list[str]:
    """Register the label/rationale tasks and step-by-step mixtures of one dataset.

    Reads no data: sources load on first use. Re-registering a name replaces
    it. The prefixes go before every input of the label and rationale tasks.
    `vocabulary` is a seqio vocabulary or a path for `distill.vocab.load_vocabulary`.
    With `tfds_dir`, reads `<tfds_dir>/distill_<dataset>/` (for `jsonl`:
    `distill_<name_prefix>`) prepared by `distill data build`.
    Returns the task names, then the mixture names.
    """
    from distill.data import datasets
    from distill.metrics import metric_fn_for

    datasets.get_spec(dataset)  # UserError for an unknown name
    if not data_dir or ("://" not in data_dir and not os.path.isdir(data_dir)):
        raise UserError(f"data dir {data_dir!r} does not exist; pass the folder holding the {dataset} files")
    if not 0.0 < train_fraction <= 1.0:
        raise UserError(f"train_fraction {train_fraction} must be in (0, 1]")
    checked_prefixes(label_prefix, rationale_prefix)
    prefix = name_prefix or dataset
    if not _VALID_PREFIX.match(prefix):
        raise UserError(f"task name prefix {prefix!r} may hold only letters, digits, '_', '.' and ':'")
    tfds_name = prefix if dataset == "jsonl" else dataset
    if tfds_dir is not None and "://" not in tfds_dir and not os.path.isdir(tfds_builder.builder_dir(tfds_dir, tfds_name)):
        raise UserError(
            f"no prepared TFDS dataset at {tfds_builder.builder_dir(tfds_dir, tfds_name)}; run "
            f"`distill data build --dataset {dataset} --out {tfds_dir}` or leave tfds_dir unset"
        )

    vocabulary = _as_vocabulary(vocabulary)
    features = output_features(vocabulary)
    records, train_filter = _records_source(dataset, data_dir, tfds_name, train_fraction, tfds_dir)
    metric_fns = [metric_fn_for(dataset)]
    names = []
    for config in task_configs(label_prefix, rationale_prefix):
        name = f"{prefix}_{config.suffix}"
        seqio.MixtureRegistry.remove(name)
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=TargetSource(records, config, train_filter),
            output_features=features,
            preprocessors=[
                functools.partial(to_inputs_and_targets, prefix=config.input_prefix, task_id=config.task_id),
                seqio.preprocessors.tokenize,
                seqio.preprocessors.append_eos_after_trim,
            ],
            postprocess_fn=strip_whitespace if config.with_metrics else None,
            metric_fns=metric_fns if config.with_metrics else [],
        )
        names.append(name)
    for mixture in MIXTURES:
        name = f"{prefix}_{mixture.suffix}"
        seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(
            name,
            [f"{prefix}_{suffix}" for suffix in mixture.task_suffixes],
            default_rate=rate_num_train_examples,
            mixture_cls=StepByStepMixture,
        )
        names.append(name)
    return names


def _prepared(tfds_dir: str | None, name: str) -> str | None:
    """tfds_dir when it holds a prepared `name` (remote paths are trusted: no network at import)."""
    if not tfds_dir:
        return None
    if "://" in tfds_dir or os.path.isdir(tfds_builder.builder_dir(tfds_dir, name)):
        return tfds_dir
    return None


def register_from_environment(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Registers every dataset under $DISTILL_DATA_DIR (what `import distill.registered_tasks` does),
    with the task prefixes of $DISTILL_LABEL_PREFIX / $DISTILL_RATIONALE_PREFIX (default `[label] ` /
    `[rationale] `).

    Never raises (a broken setup must not break importing the module): logs a
    warning and registers what it can.
    """
    data_dir = environ.get("DISTILL_DATA_DIR")
    if not data_dir:
        return []
    vocab_path = environ.get("DISTILL_VOCABULARY") or DEFAULT_VOCABULARY
    if "://" not in vocab_path and not os.path.exists(vocab_path):
        logger.warning("DISTILL_VOCABULARY=%s does not exist; no distill tasks registered", vocab_path)
        return []
    try:
        prefixes = environment_prefixes(environ)
    except UserError as err:
        logger.warning("%s; no distill tasks registered", err)
        return []
    names = []
    try:
        from distill.data import datasets

        vocabulary = seqio.SentencePieceVocabulary(vocab_path)  # lazy: read on first use
        for dataset in datasets.available_datasets(data_dir):
            names += register_tasks(dataset=dataset, data_dir=data_dir, vocabulary=vocabulary,
                                    tfds_dir=_prepared(environ.get("DISTILL_TFDS_DIR"), dataset),
                                    label_prefix=prefixes["label"], rationale_prefix=prefixes["rationale"])
    except Exception as err:  # noqa: BLE001 - import must never fail; say why instead
        logger.warning("registering distill tasks from DISTILL_DATA_DIR=%s failed: %s", data_dir, err)
    return names

