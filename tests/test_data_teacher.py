"""Teacher outputs: the project's <split>.teacher.jsonl vs the reference llm/ files."""
import json

import pytest

from data_helpers import anli1_completion, anli1_record, write_anli1, write_json_lines
from distill.data.datasets import load_examples
from distill.data.splits import derived_valid_split
from distill.errors import UserError


def _teacher_line(index: int, **fields) -> dict:
    return {"id": f"uid-{index}", "input": "...", **fields}


def test_teacher_jsonl_wins_over_reference_files(tmp_path):
    write_anli1(tmp_path, {"train": 3, "test": 3})
    write_json_lines(tmp_path / "anli1" / "test.teacher.jsonl", [
        _teacher_line(0, rationale="Mine.", teacher_label="Neutral", teacher_raw="Mine. So the answer is neutral.",
                      parse_ok=True, error=None),
        _teacher_line(1, teacher_raw=anli1_completion(1, "contradiction")),  # parsed here
        _teacher_line(2, rationale=None, teacher_label=None, teacher_raw=None, parse_ok=False, error="timeout"),
    ])
    test = load_examples("anli1", "test", str(tmp_path))
    assert [(e["rationale"], e["teacher_label"], e["parse_ok"]) for e in test] == [
        ("Mine.", "neutral", True), ("Reasoning about premise 1.", "contradiction", True), (None, None, False)]
    train = load_examples("anli1", "train", str(tmp_path))  # no train.teacher.jsonl: the llm/ files
    assert train[0]["teacher_raw"] == anli1_completion(0)


def test_teacher_jsonl_completions_list_and_parse_ok_false(tmp_path):
    write_anli1(tmp_path, {"train": 2, "test": 2}, with_cot=False)
    write_json_lines(tmp_path / "anli1" / "test.teacher.jsonl", [
        {"completions": [anli1_completion(0), "ignored"]},
        {"rationale": "R.", "teacher_label": "neutral", "parse_ok": False},
    ])
    first, second = load_examples("anli1", "test", str(tmp_path))
    assert (first["teacher_label"], first["teacher_raw"], first["parse_ok"]) == ("entailment", anli1_completion(0), True)
    assert second["parse_ok"] is False and second["teacher_label"] == "neutral"


def test_teacher_module_lines_with_samples_keep_its_verdict(tmp_path):
    # `distill teacher` writes teacher_raw as the list of samples and its own (voted) verdict.
    write_anli1(tmp_path, {"train": 2, "test": 2}, with_cot=False)
    write_json_lines(tmp_path / "anli1" / "test.teacher.jsonl", [
        _teacher_line(0, rationale="Voted.", rationales=["Voted.", "Other."], teacher_label="neutral",
                      teacher_raw=["Voted. So the answer is neutral.", "Other. So the answer is neutral."],
                      parse_ok=True, error=None),
        _teacher_line(1, rationale=None, teacher_label=None, teacher_raw=[anli1_completion(1)],
                      parse_ok=False, error="no majority"),  # not re-parsed: the teacher's verdict stands
    ])
    first, second = load_examples("anli1", "test", str(tmp_path))
    assert first == {**first, "rationale": "Voted.", "teacher_label": "neutral",
                     "teacher_raw": "Voted. So the answer is neutral.", "parse_ok": True}
    assert (second["teacher_label"], second["teacher_raw"], second["parse_ok"]) == (None, anli1_completion(1), False)


def test_derived_valid_takes_teacher_jsonl_lines_at_train_positions(tmp_path):
    records = [anli1_record(i) for i in range(20)]
    write_json_lines(tmp_path / "anli1" / "anli1_train.json", records)
    write_json_lines(tmp_path / "anli1" / "anli1_test.json", records[:2])
    write_json_lines(tmp_path / "anli1" / "train.teacher.jsonl",
                     [_teacher_line(i, rationale=f"R{i}.", teacher_label="neutral") for i in range(20)])
    valid = load_examples("anli1", "valid", str(tmp_path))
    _, positions = derived_valid_split(20)
    assert [(e["id"], e["rationale"]) for e in valid] == [(f"uid-{p}", f"R{p}.") for p in positions]
    assert "parse_ok" not in load_examples("anli1", "test", str(tmp_path))[0]


def test_teacher_jsonl_id_mismatch_names_file_and_line(tmp_path):
    write_anli1(tmp_path, {"train": 2, "test": 2}, with_cot=False)
    path = write_json_lines(tmp_path / "anli1" / "test.teacher.jsonl",
                            [_teacher_line(0, teacher_raw="x"), _teacher_line(7, teacher_raw="y")])
    with pytest.raises(UserError, match=rf"{path}:2: id 'uid-7' does not match example 1 of .*anli1_test.json"):
        load_examples("anli1", "test", str(tmp_path))
    assert load_examples("anli1", "test", str(tmp_path), with_teacher=False)  # the examples still load


def test_teacher_jsonl_length_mismatch(tmp_path):
    write_anli1(tmp_path, {"train": 2, "test": 3}, with_cot=False)
    path = write_json_lines(tmp_path / "anli1" / "test.teacher.jsonl", [{"teacher_raw": "x"}] * 2)
    with pytest.raises(UserError, match=rf"{path} holds 2 teacher outputs but .*anli1_test.json has 3 examples"):
        load_examples("anli1", "test", str(tmp_path))


def test_reference_blocks_concatenate_in_numeric_order(tmp_path):
    write_anli1(tmp_path, {"train": 12, "test": 1}, block=1)  # train_CoT_0..11: 10 and 11 sort after 9
    train = load_examples("anli1", "train", str(tmp_path), with_teacher=True)
    valid = load_examples("anli1", "valid", str(tmp_path))
    for example in train + valid:
        index = int(example["id"].split("-")[1])
        assert example["teacher_raw"] == anli1_completion(index)


def test_missing_reference_block_is_an_error(tmp_path):
    write_anli1(tmp_path, {"train": 12, "test": 1}, block=4)
    (tmp_path / "anli1" / "llm" / "train_CoT_1.json").unlink()
    with pytest.raises(UserError, match=r"train_CoT_1.json is missing but later blocks exist"):
        load_examples("anli1", "train", str(tmp_path))


def test_malformed_reference_block(tmp_path):
    write_anli1(tmp_path, {"train": 2, "test": 1})
    (tmp_path / "anli1" / "llm" / "test_CoT_0.json").write_text('["ok",\n oops]')
    with pytest.raises(UserError, match=r"test_CoT_0.json:2: malformed JSON"):
        load_examples("anli1", "test", str(tmp_path))
    (tmp_path / "anli1" / "llm" / "test_CoT_0.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(UserError, match=r"test_CoT_0.json: expected a JSON list of completions, got dict"):
        load_examples("anli1", "test", str(tmp_path))


def test_two_cot_files_with_the_same_block_number_are_refused(tmp_path):
    root = write_anli1(tmp_path, {"train": 8, "test": 8})
    llm = root / "anli1" / "llm"
    (llm / "test_CoT_00.json").write_text((llm / "test_CoT_0.json").read_text())
    with pytest.raises(UserError, match="test_CoT_0.json and test_CoT_00.json are the same block number"):
        load_examples("anli1", "test", str(root), with_teacher=True)
