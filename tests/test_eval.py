"""`distill eval` / `distill infer` on a trained model dir, and the metrics.json bookkeeping."""
from __future__ import annotations

import json
import os

import pytest

import runs_helpers as h
from distill.cli import main as cli
from distill.errors import UserError
from distill.evaluation import with_step_results
from distill.run_dir import read_metrics, write_metrics
from distill.optimizers import make_optimizer


def test_eval_and_infer_on_a_trained_dir(shared_data_dir, tmp_path, capsys):
    from distill.train import train

    model_dir = tmp_path / "run"
    train(model_dir=str(model_dir), dataset="svamp", mixture_or_task_name="svamp_step_by_step_llm",
          task_feature_lengths={"inputs": 128, "targets": 64}, train_steps=2, batch_size=4,
          model_config=h.micro_config(dropout_rate=0.0), optimizer=make_optimizer("adamw", 1e-3),
          data_dir=str(shared_data_dir), train_fraction=0.125, eval_splits=(), async_checkpointing=False,
          vocabulary_path=h.train_vocabulary(shared_data_dir, tmp_path))
    assert not (model_dir / "metrics.json").exists()
    capsys.readouterr()

    fast = ["--gin.MAX_EXAMPLES=3", "--gin.MAX_DECODE_LENGTH=4"]
    assert cli(["eval", "--checkpoint", str(model_dir), *fast]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"validation", "test"} and printed["test"]["num_examples"] == 3
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["task"] == "svamp_label_llm" and metrics["latest_step"] == 2  # evaluated on gold labels
    assert metrics["test_accuracy"] == printed["test"]["accuracy"]
    lines = (model_dir / "predictions" / "test_step2.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["input"].startswith("[label] ")

    out_dir = tmp_path / "elsewhere"
    args = ["eval", "--checkpoint", str(model_dir / "checkpoints" / "2"), "--gin.SPLITS=('test',)",
            f"--gin.OUTPUT_DIR='{out_dir}'", *fast]
    assert cli(args) == 0
    assert set(json.loads((out_dir / "metrics.json").read_text())["evals"]["2"]) == {"test"}
    # The same checkpoint and settings decode the same predictions.
    assert (out_dir / "predictions" / "test_step2.jsonl").read_text() == "\n".join(lines) + "\n"

    assert cli(["infer", "--checkpoint", str(model_dir), "--gin.TASK='rationale'", *fast]) == 0
    path = model_dir / "predictions" / "infer_rationale_test_step2.jsonl"
    assert f"wrote {path}" in capsys.readouterr().out
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 3 and records[0]["input"].startswith("[rationale] ") and records[0]["target"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "/nonexistent/run"], "checkpoint /nonexistent/run does not exist"),
    (["eval"], "required gin macro(s) not set: CHECKPOINT_PATH"),
    (["infer", "--checkpoint", "{tmp}"], "holds no finished checkpoint"),
    (["infer", "--checkpoint", "/x", "--gin.TASK='summary'"], "TASK='summary' must be one of label, rationale"),
])
def test_bad_checkpoint_is_one_line(tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def update_metrics_file(model_dir: str, **step_results) -> dict:
    data = with_step_results(read_metrics(model_dir), **step_results)
    write_metrics(model_dir, data)
    return data


def test_metrics_file_keeps_every_step_and_summarizes_the_latest(tmp_path):
    update_metrics_file(str(tmp_path), step=10, results={"test": {"accuracy": 0.25}, "validation": {"accuracy": 0.5}},
                        dataset="svamp", task="svamp_label_gt")
    data = update_metrics_file(str(tmp_path), step=20, results={"test": {"accuracy": 0.75}}, dataset="svamp",
                               task="svamp_label_gt")
    assert data["latest_step"] == 20 and data["test_accuracy"] == 0.75
    assert list(data["evals"]) == ["10", "20"] and data["evals"]["10"]["validation"]["accuracy"] == 0.5
    update_metrics_file(str(tmp_path), step=5, results={"test": {"accuracy": 0.0}}, dataset="svamp",
                        task="svamp_label_gt")  # an older step (re-evaluation) does not move the summary
    data = read_metrics(str(tmp_path))
    assert data["test_accuracy"] == 0.75 and list(data["evals"]) == ["5", "10", "20"]
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]  # no temp files left behind


def test_corrupt_metrics_file_is_reported_not_overwritten(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match="metrics.json is not readable JSON"):
        update_metrics_file(str(tmp_path), step=1, results={}, dataset="svamp", task="t")
    assert (tmp_path / "metrics.json").read_text() == "{not json"


class _IdsVocabulary:
    """Decodes ids to their numbers: predictions show exactly which tokens came out."""

    vocab_size = 512

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_splits_decoded_together_get_what_each_split_alone_gets(tmp_path):
    import jax
    import numpy as np
    from flax import linen as nn

    from distill.evaluation import EvalSettings, Evaluator
    from distill.input_pipeline import EvalExample
    from distill.models.t5 import init_params
    from distill.predict import decode_ids

    config = h.micro_config(vocab_size=512)
    params = nn.unbox(init_params(config, jax.random.PRNGKey(3), encoder_length=8, decoder_length=8))["params"]
    rng = np.random.default_rng(0)
    splits = {split: [EvalExample(f"{split} {i}", tuple(int(t) for t in rng.integers(3, 512, rng.integers(4, 40))),
                                  "1") for i in range(count)] for split, count in (("validation", 5), ("test", 9))}
    evaluator = Evaluator(label_task="svamp_label_gt", rationale_task=None, dataset="svamp",
                          vocabulary=_IdsVocabulary(), output_dir=str(tmp_path),
                          settings=EvalSettings(batch_size=4, max_decode_length=6),
                          read_examples=lambda task, split, max_examples=None: splits[split])
    results = evaluator.evaluate(config, params, 1)
    for split, examples in splits.items():
        alone = decode_ids(config, params, _IdsVocabulary(), [e.input_ids for e in examples], batch_size=4,
                           max_decode_length=6)
        written = [json.loads(line) for line in (tmp_path / "predictions" / f"{split}_step1.jsonl").read_text().splitlines()]
        assert [record["prediction"] for record in written] == alone
        assert [record["input"] for record in written] == [e.input for e in examples]
        assert results[split]["num_examples"] == len(examples)
