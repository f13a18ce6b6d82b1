"""Normalization of each dataset to {id, input, label}: real svamp/cqa, fixtures for the rest."""
import json

import pytest

from data_helpers import anli1_record, esnli_completion, esnli_record, snapshot, write_anli1, write_json_lines, \
    write_reference_dataset
from distill.data.datasets import DATASET_NAMES, available_datasets, get_spec, load_examples
from distill.errors import UserError


def test_specs():
    assert DATASET_NAMES == ("svamp", "cqa", "esnli", "anli1")
    assert get_spec("svamp").metric == "equation_accuracy" and get_spec("svamp").label_space is None
    assert get_spec("anli1").label_space == ("entailment", "neutral", "contradiction")
    assert get_spec("esnli").has_valid_split and not get_spec("cqa").has_valid_split
    with pytest.raises(UserError, match=r"unknown dataset 'snli'; known datasets: svamp, cqa, esnli, anli1, jsonl"):
        get_spec("snli")


def test_svamp_real_files(shared_data_dir):
    test = load_examples("svamp", "test", str(shared_data_dir))
    assert len(test) == 200
    assert test[0] == {
        "id": "svamp-test-0",
        "input": "Paige was helping her mom plant flowers and together they planted some seeds. They put 10 seeds "
                 "in each flower bed. If there are 45 flowerbeds\nHow many seeds did they plant?",
        "label": "( 10.0 * 45.0 )",
        "rationale": test[0]["rationale"], "teacher_label": test[0]["teacher_label"],
        "teacher_raw": test[0]["teacher_raw"], "parse_ok": test[0]["parse_ok"],
    }
    assert len({e["id"] for e in test}) == 200
    train = load_examples("svamp", "train", str(shared_data_dir), with_teacher=False)
    assert set(train[0]) == {"id", "input", "label"} and train[0]["id"].startswith("svamp-train-")


def test_cqa_real_files(shared_data_dir):
    test = load_examples("cqa", "test", str(shared_data_dir))
    assert len(test) == 1221
    first = test[0]
    assert first["id"] == "080ef6941410139d6869e78122bc741e"
    assert first["input"] == ("A beaver is know for building prowess, their supplies come from where?\n"
                              "Answer Choices:\n(a) british columbia\n(b) body of water\n(c) wooded area\n"
                              "(d) pay debts\n(e) zoo")
    assert first["label"] == "wooded area"
    assert first["teacher_label"] == "wooded area" and first["parse_ok"]
    assert first["teacher_raw"].startswith(first["rationale"])


def test_cqa_train_joins_teacher_by_file_position(shared_data_dir):
    train = load_examples("cqa", "train", str(shared_data_dir))
    valid = load_examples("cqa", "valid", str(shared_data_dir))
    by_id = {e["id"]: e for e in train + valid}
    assert len(by_id) == 9741
    bum = by_id["3a1b3c21a11f4ec53c166b0559df7369"]  # line 2 of cqa_train.json, CoT block 0 item 1
    assert bum["label"] == "bridge" and bum["teacher_label"] == "train station"
    assert "a bum would live" in bum["rationale"]


def test_anli1_fixture(tmp_path):
    write_anli1(tmp_path, {"train": 6, "valid": 3, "test": 3})
    train = load_examples("anli1", "train", str(tmp_path))
    assert [e["id"] for e in train] == [f"uid-{i}" for i in range(6)]  # own valid file: train is whole
    assert train[1]["input"] == "Premise: Premise number 1.\nHypothesis: Hypothesis number 1."
    assert [e["label"] for e in train[:3]] == ["entailment", "neutral", "contradiction"]
    assert [e["teacher_label"] for e in train[:3]] == ["entailment", "neutral", "contradiction"]
    assert all(e["parse_ok"] for e in train) and train[0]["rationale"] == "Reasoning about premise 0."
    valid = load_examples("anli1", "valid", str(tmp_path))
    assert [e["id"] for e in valid] == ["uid-0", "uid-1", "uid-2"]
    assert valid[2]["teacher_label"] == "contradiction"


def test_esnli_fixture_ids_and_labels(tmp_path):
    records = [esnli_record(i) for i in range(4)]
    records[3]["label"] = "Neutral"  # already-textual labels are accepted
    write_reference_dataset(tmp_path, "esnli", {"train": records, "valid": records[:2], "test": records[:2]},
                            {"test": [[esnli_completion(0), esnli_completion(1, "Contradiction")]]})
    train = load_examples("esnli", "train", str(tmp_path))
    assert [e["id"] for e in train] == [f"esnli-train-{i}" for i in range(4)]
    assert [e["label"] for e in train] == ["entailment", "neutral", "contradiction", "neutral"]
    assert "parse_ok" not in train[0]  # no teacher outputs for train
    assert train[0]["input"] == "Premise: A man plays guitar 0.\nHypothesis: A person makes music 0."
    test = load_examples("esnli", "test", str(tmp_path))
    assert [(e["teacher_label"], e["parse_ok"]) for e in test] == [("entailment", True), ("contradiction", True)]
    assert test[0]["rationale"] == "Playing guitar is making music 0."


def test_generic_jsonl_with_inline_teacher_fields(tmp_path):
    write_json_lines(tmp_path / "train.jsonl", [
        {"id": "a", "input": "2+2?", "label": "4", "rationale": "Two and two.", "teacher_label": "4"},
        {"input": "3+3?", "label": "6", "teacher_raw": "Three and three. So the answer is 6."},
        {"input": "unlabeled", "teacher_raw": "no answer here"},
    ])
    (tmp_path / "test.jsonl").write_text("\ufeff" + json.dumps({"input": "1+1?", "label": "2"}) + "\n",
                                         encoding="utf-8")  # a byte-order mark is tolerated
    train = load_examples("jsonl", "train", str(tmp_path), with_teacher=True)
    valid = load_examples("jsonl", "valid", str(tmp_path))
    by_id = {e["id"]: e for e in train + valid}
    assert set(by_id) == {"a", "train-1", "train-2"}
    assert by_id["a"]["rationale"] == "Two and two." and by_id["a"]["parse_ok"]
    assert (by_id["train-1"]["rationale"], by_id["train-1"]["teacher_label"]) == ("Three and three.", "6")
    assert by_id["train-2"]["label"] == "" and not by_id["train-2"]["parse_ok"]
    test = load_examples("jsonl", "test", str(tmp_path))
    assert test == [{"id": "test-0", "input": "1+1?", "label": "2"}]


def test_available_datasets_and_reading_writes_nothing(tmp_path, shared_data_dir):
    assert available_datasets(str(shared_data_dir)) == ["svamp", "cqa"]
    assert available_datasets(str(tmp_path / "missing")) == []
    write_anli1(tmp_path, {"train": 3, "test": 3})
    (tmp_path / "esnli").mkdir()
    (tmp_path / "esnli" / "esnli_train.json").write_text(json.dumps(anli1_record(0)) + "\n")
    assert available_datasets(str(tmp_path)) == ["anli1"]  # esnli lacks a test file
    before = snapshot(tmp_path)
    for split in ("train", "valid", "test"):
        load_examples("anli1", split, str(tmp_path), train_fraction=0.5)
    assert snapshot(tmp_path) == before
