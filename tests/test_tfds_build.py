"""`distill data build`: prepared TFDS datasets read by the tasks give the raw files' examples."""
import os

import pytest
import seqio
import tensorflow_datasets as tfds

from distill import cli
from distill.data import tfds_builder
from distill.data.datasets import load_examples
from distill.tasks import register_tasks
from tasks_helpers import isolated_registry, read_all, train_tiny_vocab, write_jsonl_dataset


@pytest.fixture(scope="module")
def svamp_tfds(shared_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfds")
    prepared = tfds_builder.build("svamp", str(shared_data_dir), str(out), num_shards=2)
    return {"out": str(out), "prepared": prepared, "data_dir": str(shared_data_dir),
            "vocab": train_tiny_vocab(out.parent / "tiny.model")}


def test_prepared_records_are_the_normalized_examples(svamp_tfds):
    assert svamp_tfds["prepared"] == f"{svamp_tfds['out']}/distill_svamp/1.0.0"
    builder = tfds.builder_from_directory(svamp_tfds["prepared"])
    assert {split: info.num_examples for split, info in builder.info.splits.items()} == {
        "train": 720, "validation": 80, "test": 200}
    for tfds_split, split in (("validation", "valid"), ("test", "test")):
        stored = sorted(read_all(builder.as_dataset(split=tfds_split)), key=lambda r: r["id"])
        expected = sorted((tfds_builder.to_record(ex) for ex in load_examples("svamp", split, svamp_tfds["data_dir"])),
                          key=lambda r: r["id"])
        assert stored == expected
    assert any(not r["parse_ok"] and r["rationale"] == "" for r in stored)  # failures kept, marked


def _sorted(examples):
    return sorted(examples, key=lambda ex: ex["id"])


def test_tfds_and_raw_file_sources_give_the_same_task_examples(svamp_tfds):
    common = dict(dataset="svamp", data_dir=svamp_tfds["data_dir"], vocabulary=svamp_tfds["vocab"], train_fraction=0.5)
    with isolated_registry():
        register_tasks(name_prefix="raw", **common)
        register_tasks(name_prefix="prepared", tfds_dir=svamp_tfds["out"], **common)
        cases = [("label_gt", "train"), ("label_gt", "validation"), ("label_gt", "test"),
                 ("label_llm", "train"), ("rationale", "train")]
        for suffix, split in cases:  # {id, input, target} of the task's split
            raw, prepared = seqio.TaskRegistry.get(f"raw_{suffix}"), seqio.TaskRegistry.get(f"prepared_{suffix}")
            assert "TfdsDataSource" in repr(prepared.source) and "FunctionDataSource" in repr(raw.source)
            from_raw = _sorted(read_all(raw.source.get_dataset(split=split, shuffle=False)))
            from_tfds = _sorted(read_all(prepared.source.get_dataset(split=split, shuffle=False)))
            assert from_tfds == from_raw and from_raw, (suffix, split)
            assert prepared.num_input_examples(split) == raw.num_input_examples(split) == len(from_raw)
        assert raw.num_input_examples("train") < 720 // 2  # rationale: the half fraction, parse failures out
        # And through the preprocessors: the same tokenized examples.
        raw_llm, prepared_llm = (seqio.TaskRegistry.get(f"{p}_label_llm").get_dataset(None, split="train", shuffle=False)
                                 for p in ("raw", "prepared"))
        assert _sorted(read_all(prepared_llm)) == _sorted(read_all(raw_llm))


def test_tfds_source_shards_files_per_host(svamp_tfds):
    with isolated_registry():
        register_tasks(dataset="svamp", data_dir=svamp_tfds["data_dir"], vocabulary=svamp_tfds["vocab"],
                       tfds_dir=svamp_tfds["out"])
        task = seqio.TaskRegistry.get("svamp_label_gt")
        assert len(task.source.list_shards("test")) == 2  # two files: each of two hosts reads one
        shards = [{ex["id"] for ex in read_all(task.get_dataset(None, split="test", shuffle=False,
                                                                shard_info=seqio.ShardInfo(index, 2)))}
                  for index in range(2)]
        assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 200


def test_cli_builds_jsonl_and_refuses_bad_input(tmp_path, capsys):
    data_dir = str(write_jsonl_dataset(tmp_path / "data"))
    out = str(tmp_path / "tfds")
    assert cli.main(["data", "build", "--dataset", "jsonl", "--data-dir", data_dir, "--out", out, "--name", "toy"]) == 0
    assert f"prepared {out}/distill_toy/1.0.0" in capsys.readouterr().out
    with isolated_registry():
        register_tasks(dataset="jsonl", data_dir=data_dir, vocabulary=train_tiny_vocab(tmp_path / "v.model"),
                       name_prefix="toy", tfds_dir=out)
        assert seqio.TaskRegistry.get("toy_rationale").num_input_examples("train") == 9

    before = sorted(os.listdir(data_dir))
    bad = [
        (["--dataset", "jsonl", "--data-dir", data_dir, "--out", out, "--name", "toy"], "already prepared"),
        (["--dataset", "snli", "--data-dir", data_dir, "--out", out], "unknown dataset 'snli'"),
        (["--dataset", "svamp", "--data-dir", str(tmp_path / "missing"), "--out", out], "missing' does not exist"),
        (["--dataset", "jsonl", "--data-dir", data_dir, "--out", f"{data_dir}/tfds"], "is inside the data dir"),
        (["--dataset", "jsonl", "--data-dir", data_dir, "--out", out, "--name", "My-Set"], "dataset name 'My-Set'"),
        (["--dataset", "jsonl", "--data-dir", data_dir, "--out", out, "--num-shards", "0"], "must be at least 1"),
    ]
    for args, message in bad:
        assert cli.main(["data", "build", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(os.listdir(data_dir)) == before  # nothing written into the data dir
