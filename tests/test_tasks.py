"""SeqIO tasks and mixtures: targets per split, task ids, metrics, rates, registration."""
import os

import numpy as np
import pytest
import seqio

import distill.tasks
from distill.data.datasets import available_datasets
from distill.errors import UserError
from distill.feature_converters import StepByStepFeatureConverter
from distill.metrics import accuracy
from distill.tasks import register_from_environment, register_tasks
from tasks_helpers import isolated_registry, read_all, train_tiny_vocab, write_jsonl_dataset

SUFFIXES = ["label_gt", "label_llm", "rationale", "step_by_step_gt", "step_by_step_llm"]
LENGTHS = {"inputs": 64, "targets": 32}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The tiny JSONL dataset registered as `toy_*` (registry restored afterwards)."""
    root = tmp_path_factory.mktemp("toy")
    data_dir, vocab_path = str(write_jsonl_dataset(root / "data")), train_tiny_vocab(root / "toy.model")
    with isolated_registry(empty=False):
        names = register_tasks(dataset="jsonl", data_dir=data_dir, vocabulary=vocab_path, name_prefix="toy")
        yield {"names": names, "data_dir": data_dir, "vocab": vocab_path}


def _examples(name: str, split: str) -> list[dict]:
    return read_all(seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False))


def _texts(examples, key="targets_pretokenized"):
    return {ex["id"]: ex[key] for ex in examples}


def test_names_splits_and_label_tasks(toy):
    assert toy["names"] == [f"toy_{suffix}" for suffix in SUFFIXES]
    gt_train = _examples("toy_label_gt", "train")
    # q7 has no gold label: not in the gold-label task.
    assert _texts(gt_train) == {f"q{i}": f"sum {2 * i + 1}" for i in range(10) if i != 7}
    first = gt_train[0]
    assert first["inputs_pretokenized"] == "[label] What is 0 plus 1?" and first["task_id"] == 0
    assert first["targets"][-1] == 1 and first["inputs"][-1] == 1  # EOS appended
    vocabulary = seqio.get_mixture_or_task("toy_label_gt").output_features["targets"].vocabulary
    assert vocabulary.decode(first["targets"]) == "sum 1"

    # Teacher labels on train (q3 failed to parse; q5's teacher label is wrong but kept), gold on eval splits.
    assert _texts(_examples("toy_label_llm", "train")) == {
        **{f"q{i}": f"sum {2 * i + 1}" for i in range(10) if i != 3}, "q5": "sum 12"}
    assert _texts(_examples("toy_label_llm", "validation")) == {"v0": "sum 41"}  # seqio "validation" = valid.jsonl
    assert _texts(_examples("toy_label_llm", "test")) == {"t0": "sum 0", "t1": "sum 2", "t2": "sum 4"}
    for name in ("toy_label_gt", "toy_label_llm"):
        task = seqio.get_mixture_or_task(name)
        assert task.splits == ("train", "validation", "test")
        assert task.metric_fns == [accuracy]
        assert task.postprocess_fn(" sum 3 \n", example={}, is_target=False) == "sum 3"


def test_rationale_task(toy):
    train = _examples("toy_rationale", "train")
    assert _texts(train) == {f"q{i}": f"{i} and {i + 1} together make {2 * i + 1}." for i in range(10) if i != 3}
    assert {ex["task_id"] for ex in train} == {1}
    assert all(ex["inputs_pretokenized"].startswith("[rationale] What is") for ex in train)
    assert _texts(_examples("toy_rationale", "test"))["t1"] == "1 twice is 2."
    task = seqio.get_mixture_or_task("toy_rationale")
    assert task.metric_fns == [] and task.num_input_examples("train") == 9


def test_mixture_rates_and_task_ids_survive_mixing_and_packing(toy):
    mixture = seqio.get_mixture_or_task("toy_step_by_step_llm")
    assert [t.name for t in mixture.tasks] == ["toy_label_llm", "toy_rationale"]
    # Rates = train examples per task, so each example is seen as often in both tasks.
    assert [mixture.get_rate(t) for t in mixture.tasks] == [9.0, 9.0]
    gt = seqio.get_mixture_or_task("toy_step_by_step_gt")
    assert [gt.get_rate(t) for t in gt.tasks] == [9.0, 9.0]

    mixed = read_all(mixture.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1, copy_pretokenized=True))
    assert {ex["task_id"] for ex in mixed} == {0, 1}
    for ex in mixed:
        prefix = "[label] " if ex["task_id"] == 0 else "[rationale] "
        assert ex["inputs_pretokenized"].startswith(prefix)

    rows = read_all(seqio.get_dataset("toy_step_by_step_llm", LENGTHS, StepByStepFeatureConverter(pack=True),
                                      shuffle=False))
    weights, task_ids, segments = (np.array([row[key] for row in rows]) for key in
                                   ("decoder_loss_weights", "decoder_task_ids", "decoder_segment_ids"))
    assert set(task_ids[weights == 1].tolist()) == {0, 1}
    assert not task_ids[weights == 0].any()
    for row_ids, row_segments in zip(task_ids, segments):  # one task per packed segment
        for segment in set(row_segments.tolist()) - {0}:
            assert len(set(row_ids[row_segments == segment].tolist())) == 1


def test_register_is_idempotent_configurable_and_lazy(toy, tmp_path):
    full = set(_texts(_examples("toy_label_gt", "train")))
    with isolated_registry():
        kwargs = dict(dataset="jsonl", data_dir=toy["data_dir"], vocabulary=toy["vocab"], name_prefix="toy2",
                      label_prefix="[L] ", rationale_prefix="[R] ", train_fraction=0.5)
        first = register_tasks(**kwargs)
        old_task = seqio.TaskRegistry.get("toy2_rationale")
        assert register_tasks(**kwargs) == first == [f"toy2_{suffix}" for suffix in SUFFIXES]
        new_task = seqio.TaskRegistry.get("toy2_rationale")
        assert new_task is not old_task
        assert seqio.get_mixture_or_task("toy2_step_by_step_gt").tasks[1] is new_task
        rationale = _examples("toy2_rationale", "train")
        assert all(ex["inputs_pretokenized"].startswith("[R] What") for ex in rationale)
        assert _examples("toy2_label_gt", "train")[0]["inputs_pretokenized"].startswith("[L] What")
        half = set(_texts(_examples("toy2_label_gt", "train")))
        assert half < full and len(half) in (4, 5)
        assert len(_examples("toy2_label_gt", "test")) == 3  # the fraction is for train only


def test_register_rejects_bad_input(toy, tmp_path):
    good = dict(dataset="jsonl", data_dir=toy["data_dir"], vocabulary=toy["vocab"], name_prefix="bad")
    cases = [
        (dict(dataset="snli"), "unknown dataset 'snli'"),
        (dict(data_dir=str(tmp_path / "missing")), "missing' does not exist"),
        (dict(train_fraction=0.0), r"train_fraction 0.0 must be in \(0, 1\]"),
        (dict(train_fraction=1.5), "must be in"),
        (dict(name_prefix="my task"), "task name prefix 'my task'"),
        (dict(tfds_dir=str(tmp_path)), "no prepared TFDS dataset at .*distill_bad/1.0.0; run `distill data build"),
        (dict(vocabulary=str(tmp_path / "v.model")), "v.model' does not exist"),
    ]
    with isolated_registry():
        for change, message in cases:
            with pytest.raises(UserError, match=message):
                register_tasks(**{**good, **change})
        assert not list(seqio.TaskRegistry.names()) and not list(seqio.MixtureRegistry.names())


def test_import_registered_the_env_datasets_lazily():
    """Importing distill.registered_tasks registered every dataset of $DISTILL_DATA_DIR without reading data."""
    import distill.registered_tasks

    data_dir = os.environ.get("DISTILL_DATA_DIR")
    vocab_path = os.environ.get("DISTILL_VOCABULARY") or distill.tasks.DEFAULT_VOCABULARY
    if data_dir and ("://" in vocab_path or os.path.exists(vocab_path)):
        expected = [f"{d}_{s}" for d in available_datasets(data_dir) for s in SUFFIXES]
    else:
        expected = []
    assert distill.registered_tasks.NAMES == expected
    with isolated_registry():  # the same registration again (other tests may have replaced those names since)
        assert register_from_environment(os.environ) == expected
        for name in expected:  # with the environment's vocabulary, never loaded (no network)
            vocabulary = seqio.get_mixture_or_task(name).output_features["inputs"].vocabulary
            assert vocabulary.sentencepiece_model_file == vocab_path and vocabulary._model is None


def test_environment_registration_never_raises(tmp_path):
    with isolated_registry():
        assert register_from_environment({}) == []
        assert register_from_environment({"DISTILL_DATA_DIR": str(tmp_path / "missing")}) == []
        assert register_from_environment({"DISTILL_DATA_DIR": str(tmp_path),
                                          "DISTILL_VOCABULARY": str(tmp_path / "missing.model")}) == []
        assert not list(seqio.TaskRegistry.names())


def test_environment_prefixes_reach_the_tasks(shared_data_dir, tmp_path):
    """$DISTILL_LABEL_PREFIX / $DISTILL_RATIONALE_PREFIX (what T5X runs set) prefix the registered tasks' inputs;
    bad values register nothing."""
    environ = {"DISTILL_DATA_DIR": str(shared_data_dir), "DISTILL_VOCABULARY": str(tmp_path / "spm.model"),
               "DISTILL_LABEL_PREFIX": "predict: ", "DISTILL_RATIONALE_PREFIX": ""}
    (tmp_path / "spm.model").write_bytes(b"never read: the vocabulary loads lazily")
    with isolated_registry():
        assert "svamp_label_gt" in register_from_environment(environ)
        expected = (("svamp_label_gt", "predict: "), ("svamp_label_llm", "predict: "), ("svamp_rationale", ""))
        for task, prefix in expected:
            assert seqio.get_mixture_or_task(task).preprocessors[0].keywords["prefix"] == prefix
    for bad in ({"DISTILL_LABEL_PREFIX": "x: ", "DISTILL_RATIONALE_PREFIX": "x: "}, {"DISTILL_LABEL_PREFIX": "a\nb"}):
        with isolated_registry():
            assert register_from_environment({**environ, "DISTILL_LABEL_PREFIX": "[label] ",
                                              "DISTILL_RATIONALE_PREFIX": "[rationale] ", **bad}) == []
            assert not list(seqio.TaskRegistry.names())


def test_every_env_task_and_mixture_yields_a_batch(shared_data_dir, tmp_path):
    from distill.vocab import train_vocabulary_for_dataset

    vocab_path = train_vocabulary_for_dataset("svamp", str(shared_data_dir), size=1000,
                                              out_path=str(tmp_path / "svamp.model"))
    with isolated_registry():
        names = register_from_environment({"DISTILL_DATA_DIR": str(shared_data_dir), "DISTILL_VOCABULARY": vocab_path})
        datasets = available_datasets(str(shared_data_dir))
        assert {"svamp", "cqa"} <= set(datasets)
        assert names == [f"{d}_{s}" for d in datasets for s in SUFFIXES]
        assert sorted(names) == sorted(list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names()))
        for name in names:  # unpacked (packing is covered on the toy mixture and in test_feature_converters)
            ds = seqio.get_dataset(name, {"inputs": 128, "targets": 64}, StepByStepFeatureConverter(pack=False),
                                   shuffle=False, batch_size=8)
            batch = next(ds.as_numpy_iterator())
            assert sorted(batch) == ["decoder_input_tokens", "decoder_loss_weights", "decoder_target_tokens",
                                     "decoder_task_ids", "encoder_input_tokens"]
            assert batch["encoder_input_tokens"].shape == (8, 128) and batch["decoder_task_ids"].shape == (8, 64)
            assert all(v.dtype == np.int32 for v in batch.values())
            assert (batch["decoder_loss_weights"].sum(axis=1) > 0).all()
            task_ids = set(batch["decoder_task_ids"][batch["decoder_loss_weights"] == 1].tolist())
            expected = {"rationale": {1}, "step_by_step_gt": {0, 1}, "step_by_step_llm": {0, 1}}
            assert task_ids == expected.get(name.split("_", 1)[1], {0}), name
