"""The training feed (distill/train_feed.py): the child writes the inline pipeline's own batches, resumably.

Also: a `distill train` with the default feed imports no TensorFlow or seqio
and ends with the same parameters as an inline-fed run.
"""
from __future__ import annotations

import itertools
import json
import os
import sys

import numpy as np
import pytest

import runs_helpers as h
from distill.errors import UserError
from distill.input_pipeline import TrainData, TrainDataSpec, eval_examples
from distill.train_feed import EvalRequest, FeedSource, TrainFeed
from tasks_helpers import isolated_registry


@pytest.fixture(scope="module")
def svamp(shared_data_dir, tmp_path_factory):
    return shared_data_dir, h.train_vocabulary(shared_data_dir, tmp_path_factory.mktemp("vocab"))


def _spec(**overrides) -> TrainDataSpec:
    fields = dict(mixture_or_task_name="svamp_step_by_step_gt", task_feature_lengths=(("inputs", 128), ("targets", 64)),
                  batch_size=4, pack=True, seed=0)
    return TrainDataSpec(**{**fields, **overrides})


def _source(svamp, **overrides) -> FeedSource:
    data_dir, vocab = svamp
    return FeedSource(**{"dataset": "svamp", "data_dir": str(data_dir), "vocabulary_path": vocab,
                         "train_fraction": 0.125, **overrides})


def _inline(svamp, spec: TrainDataSpec, count: int, position: int = 0):
    from distill.tasks import register_tasks

    data_dir, vocab = svamp
    with isolated_registry():
        register_tasks(dataset="svamp", data_dir=str(data_dir), vocabulary=vocab, train_fraction=0.125)
        data = TrainData(spec, position=position)
        batches = [next(data) for _ in range(count)]
        examples = eval_examples("svamp_label_gt", "test", max_examples=5)
    return batches, data.state(), examples


def _assert_same_batches(fed, expected):
    assert len(fed) == len(expected)
    for got, want in zip(fed, expected):
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == np.int32 and got[name].shape == want[name].shape, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("layout", [{}, {"pack": False, "pack_batch": True}], ids=["packed", "pack_batch"])
def test_fed_batches_and_examples_are_the_inline_pipelines(svamp, tmp_path, layout):
    spec = _spec(**layout)
    feed = TrainFeed(str(tmp_path), spec, _source(svamp), chunk_batches=3)
    feed.prepare(0, 7, [EvalRequest("svamp_label_gt", "test", 5)])
    expected, _, examples = _inline(svamp, spec, 7)
    _assert_same_batches(list(itertools.islice(feed.batches(), 7)), expected)
    assert feed.eval_examples("svamp_label_gt", "test", max_examples=5) == examples

    resumed = feed.batches(position=4)  # mid-chunk, as after a checkpoint at step 4
    _assert_same_batches([next(resumed)], expected[4:5])
    assert resumed.state() == _inline(svamp, spec, 1, position=4)[1]  # what checkpoints store
    next(resumed), next(resumed)
    with pytest.raises(UserError, match="ends before batch 7"):
        next(resumed)


def test_an_extended_run_writes_only_the_missing_chunks(svamp, tmp_path):
    spec = _spec()
    feed = TrainFeed(str(tmp_path), spec, _source(svamp), chunk_batches=3)
    feed.prepare(0, 4)
    chunks = os.path.join(feed.dir, "batches")
    first = os.stat(os.path.join(chunks, "000000000.npz")).st_mtime_ns
    assert sorted(os.listdir(chunks)) == ["000000000.npz", "000000003.npz"]  # the second holds one batch
    feed.prepare(0, 4)  # complete: no writer
    assert feed.writer_peak_rss_gb is not None

    longer = TrainFeed(str(tmp_path), spec, _source(svamp), chunk_batches=3)
    assert longer.dir == feed.dir
    longer.prepare(0, 7)
    assert os.stat(os.path.join(chunks, "000000000.npz")).st_mtime_ns == first
    assert sorted(os.listdir(chunks)) == ["000000000.npz", "000000003.npz", "000000006.npz"]
    _assert_same_batches(list(itertools.islice(longer.batches(), 7)), _inline(svamp, spec, 7)[0])


def test_a_run_longer_than_the_first_window_writes_the_rest_on_the_way(svamp, tmp_path, monkeypatch):
    from distill import train_feed

    monkeypatch.setattr(train_feed, "AHEAD_BATCHES", 3)
    spec = _spec()
    feed = TrainFeed(str(tmp_path), spec, _source(svamp), chunk_batches=2)
    feed.prepare(0, train_feed.AHEAD_BATCHES)
    assert sorted(os.listdir(os.path.join(feed.dir, "batches"))) == ["000000000.npz", "000000002.npz"]
    fed = list(itertools.islice(feed.batches(stop=9), 9))  # windows [3, 6) and [6, 9) on the way
    _assert_same_batches(fed, _inline(svamp, spec, 9)[0])
    assert len(os.listdir(os.path.join(feed.dir, "batches"))) == 5


def test_changed_inputs_get_a_new_feed(svamp, tmp_path):
    base = TrainFeed(str(tmp_path), _spec(), _source(svamp))
    assert TrainFeed(str(tmp_path), _spec(seed=1), _source(svamp)).dir != base.dir
    assert TrainFeed(str(tmp_path), _spec(), _source(svamp, train_fraction=0.25)).dir != base.dir
    copy = tmp_path / "vocab.model"
    copy.write_bytes(open(svamp[1], "rb").read())
    assert TrainFeed(str(tmp_path), _spec(), _source(svamp, vocabulary_path=str(copy))).dir != base.dir
    assert TrainFeed(str(tmp_path), _spec(), _source(svamp, label_prefix="predict: ")).dir != base.dir
    assert TrainFeed(str(tmp_path), _spec(), _source(svamp, rationale_prefix="explain: ")).dir != base.dir


def test_the_writer_registers_the_runs_task_prefixes(svamp, tmp_path):
    feed = TrainFeed(str(tmp_path), _spec(), _source(svamp, label_prefix="predict: ", rationale_prefix=""))
    feed.prepare(0, 1, [EvalRequest("svamp_label_gt", "test", 2), EvalRequest("svamp_rationale", "test", 2)])
    labels = feed.eval_examples("svamp_label_gt", "test", max_examples=2)
    rationales = feed.eval_examples("svamp_rationale", "test", max_examples=2)
    assert all(e.input.startswith("predict: ") for e in labels)
    assert rationales and not any(e.input.startswith(("[rationale]", "predict: ")) for e in rationales)  # bare


def test_the_writers_error_line_becomes_the_error(svamp, tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    feed = TrainFeed(str(tmp_path / "feed"), _spec(), _source(svamp, tfds_dir=str(empty)))
    with pytest.raises(UserError, match="no prepared TFDS dataset at .*distill data build"):
        feed.prepare(0, 2)


def test_an_unreadable_chunk_is_named_and_rewritten(svamp, tmp_path):
    feed = TrainFeed(str(tmp_path), _spec(), _source(svamp), chunk_batches=2)
    feed.prepare(0, 2)
    chunk = os.path.join(feed.dir, "batches", "000000000.npz")
    with open(chunk, "wb") as handle:
        handle.write(b"not a zip")
    with pytest.raises(UserError, match=f"{chunk} is unreadable.*delete"):
        next(feed.batches())
    feed.prepare(0, 2)  # written again
    _assert_same_batches([next(feed.batches())], _inline(svamp, _spec(), 1)[0])


TF_FREE_TRAIN = """
import json, sys
from distill import train_feed, trainer
from distill.train import main

writing, compiles = [], []  # whether the child was writing; each train-step compilation
prepare, compiled_step = train_feed.TrainFeed.prepare, trainer.Trainer._compiled_step

def spied_prepare(self, *args, while_writing=None, **kwargs):
    def spied():
        writing.append(True)
        return while_writing()
    return prepare(self, *args, while_writing=spied if while_writing else None, **kwargs)

def spied_compiled_step(self, kind, state, batch):
    known = len(self._compiled_shapes)
    fn = compiled_step(self, kind, state, batch)
    if kind == "train" and len(self._compiled_shapes) > known:
        compiles.append(bool(writing))
    return fn

train_feed.TrainFeed.prepare, trainer.Trainer._compiled_step = spied_prepare, spied_compiled_step
code = main(sys.argv[1:])
print(json.dumps({"code": code, "heavy": sorted(m for m in ("tensorflow", "seqio") if m in sys.modules),
                  "train_step_compiles": compiles}))
"""


def test_a_process_fed_run_holds_no_tensorflow_and_matches_an_inline_run(svamp, tmp_path):
    """Also: the state is built and the step compiled while the feed is written, for the batches' one shape."""
    data_dir, vocab = svamp
    env = h.subprocess_env(data_dir)
    fed_dir, inline_dir = tmp_path / "fed", tmp_path / "inline"
    result = h.run([sys.executable, "-c", TF_FREE_TRAIN, *h.train_command(fed_dir, vocab, 4)[3:]], env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Packed rows have one shape: the step was compiled once, while the child wrote the feed.
    assert report == {"code": 0, "heavy": [], "train_step_compiles": [True]}
    assert "training feed: written" in result.stdout and (fed_dir / "feed").is_dir()

    result = h.run(h.train_command(inline_dir, vocab, 4, "--gin.TRAIN_FEED='inline'"), env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (inline_dir / "feed").exists()
    fed, inline = h.final_params(fed_dir), h.final_params(inline_dir)
    assert fed.keys() == inline.keys()
    for name in fed:
        np.testing.assert_array_equal(fed[name], inline[name], err_msg=name)
    assert _scores(fed_dir) == _scores(inline_dir)


def _scores(model_dir) -> dict:
    """metrics.json's evaluations without their timings."""
    evals = json.loads((model_dir / "metrics.json").read_text())["evals"]
    return {step: {split: {k: v for k, v in metrics.items() if k != "decode_seconds"} for split, metrics in splits.items()}
            for step, splits in evals.items()}


def test_a_bad_train_feed_value_is_one_error_line(svamp, tmp_path):
    data_dir, vocab = svamp
    result = h.run(h.train_command(tmp_path / "run", vocab, 2, "--gin.TRAIN_FEED='thread'"), h.subprocess_env(data_dir))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: TRAIN_FEED='thread' must be one of 'process', 'inline'"
    assert "Traceback" not in result.stderr


def test_an_error_while_writing_stops_the_writer_and_propagates(svamp, tmp_path):
    """distill train's state building fails (e.g. a checkpoint of another pipeline): no writer is left behind."""
    import glob

    feed = TrainFeed(str(tmp_path), _spec(), _source(svamp), chunk_batches=3)

    def fail():
        raise UserError("the checkpoint's data pipeline differs")

    with pytest.raises(UserError, match="data pipeline differs"):
        feed.prepare(0, 7, while_writing=fail)
    children = [pid for path in glob.glob(f"/proc/{os.getpid()}/task/*/children") for pid in open(path).read().split()]
    assert not children
    feed.prepare(0, 7)  # what the killed child wrote is whole: the rest is written now
    assert len(list(itertools.islice(feed.batches(stop=7), 7))) == 7
    assert feed.prepare(0, 7, while_writing=lambda: "built") == "built"  # nothing to write: it runs at once


@pytest.mark.parametrize("layout, fixed", [
    ({}, True), ({"pack": False}, True), ({"pack": False, "trim_padding": True}, False),
    ({"pack": False, "pack_batch": True}, False)])
def test_fixed_batch_shapes_are_the_layouts_whose_batches_share_one_shape(layout, fixed):
    shapes = _spec(**layout).fixed_batch_shapes()
    if not fixed:
        assert shapes is None
        return
    assert shapes["encoder_input_tokens"] == (4, 128) and shapes["decoder_task_ids"] == (4, 64)
    assert ("encoder_segment_ids" in shapes) == layout.get("pack", True)
