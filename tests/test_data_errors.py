"""Every data-layer bad input is one UserError line naming the file (and line) and the fix."""
import json

import pytest

from data_helpers import anli1_record, snapshot, write_anli1, write_json_lines
from distill.data.datasets import load_examples, resolve_data_dir
from distill.errors import UserError


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_data_dir(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        load_examples("svamp", "train", str(tmp_path / "nowhere"))
    assert f"data dir {tmp_path / 'nowhere'} does not exist; pass --data-dir DIR or set DISTILL_DATA_DIR" \
        in _one_line(err)
    with pytest.raises(UserError, match="no data dir given"):
        load_examples("svamp", "train", "")
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    with pytest.raises(UserError, match="no data dir given; pass --data-dir DIR or set DISTILL_DATA_DIR"):
        resolve_data_dir(None)
    monkeypatch.setenv("DISTILL_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == str(tmp_path)


def test_missing_dataset_folder_lists_what_is_there(tmp_path):
    write_anli1(tmp_path, {"train": 2, "test": 2})
    with pytest.raises(UserError) as err:
        load_examples("esnli", "test", str(tmp_path))
    assert f"dataset folder {tmp_path / 'esnli'} not found (datasets found under {tmp_path}: anli1)" in _one_line(err)


def test_missing_split_file(tmp_path):
    write_anli1(tmp_path, {"train": 2}, with_cot=False)
    with pytest.raises(UserError) as err:
        load_examples("anli1", "test", str(tmp_path))
    assert _one_line(err) == (f"split file {tmp_path / 'anli1' / 'anli1_test.json'} not found; "
                              "the test split must be at <data dir>/anli1/anli1_test.json")
    with pytest.raises(UserError, match=r"split file .*test.jsonl not found; .* at <data dir>/test.jsonl"):
        load_examples("jsonl", "test", str(tmp_path))


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = write_json_lines(tmp_path / "anli1" / "anli1_train.json", [anli1_record(0), anli1_record(1)])
    path.write_text(path.read_text() + "\n{\"uid\": \"x\", premise\n")  # line 4 (line 3 is blank)
    with pytest.raises(UserError) as err:
        load_examples("anli1", "train", str(tmp_path))
    assert _one_line(err).startswith(f"{path}:4: malformed JSON line (")
    assert "fix or remove that line" in str(err.value)
    path.write_text(json.dumps([anli1_record(0)]) + "\n")
    with pytest.raises(UserError, match=rf"{path}:1: expected a JSON object per line, got list"):
        load_examples("anli1", "train", str(tmp_path))


@pytest.mark.parametrize("record,message", [
    ({"uid": "u", "hypothesis": "h", "label": 0}, "record has no 'premise' field"),
    ({"uid": "u", "premise": "p", "hypothesis": "h", "label": 3}, "label 3 is not 0/1/2 or one of entailment"),
    ({"uid": "u", "premise": "p", "hypothesis": "h", "label": "maybe"}, "label 'maybe' is not 0/1/2"),
    ({"uid": "u", "premise": ["p"], "hypothesis": "h", "label": 1}, "field 'premise' must be a string, got list"),
])
def test_bad_records_name_file_line_and_field(tmp_path, record, message):
    path = write_json_lines(tmp_path / "anli1" / "anli1_test.json", [anli1_record(0), record])
    with pytest.raises(UserError) as err:
        load_examples("anli1", "test", str(tmp_path))
    assert _one_line(err).startswith(f"{path}:2: {message}")


def test_cqa_and_svamp_record_shapes(tmp_path):
    write_json_lines(tmp_path / "cqa" / "cqa_test.json", [{"id": "q", "question": "Q?", "choices": "abc", "answer": "a"}])
    with pytest.raises(UserError, match=r"cqa_test.json:1: 'choices' must be a non-empty list"):
        load_examples("cqa", "test", str(tmp_path))
    write_json_lines(tmp_path / "svamp" / "svamp_test.json", [{"input": "How many?"}])
    with pytest.raises(UserError, match=r"svamp_test.json:1: record has no 'label' field"):
        load_examples("svamp", "test", str(tmp_path))


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'gsm8k'; known datasets: svamp, cqa, esnli, anli1, jsonl"):
        load_examples("gsm8k", "train", str(tmp_path))
    with pytest.raises(UserError, match="unknown split 'dev'; use one of train, valid, test"):
        load_examples("svamp", "dev", str(tmp_path))


def test_reference_teacher_length_mismatch_names_both_files_and_counts(tmp_path):
    write_anli1(tmp_path, {"train": 10, "test": 2}, block=4)  # train_CoT_0..2 hold 4 + 4 + 2
    (tmp_path / "anli1" / "llm" / "train_CoT_2.json").write_text(json.dumps(["one"]))
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        load_examples("anli1", "valid", str(tmp_path))
    message = _one_line(err)
    llm = tmp_path / "anli1" / "llm"
    assert (f"teacher/split length mismatch: {llm / 'train_CoT_0.json'} .. train_CoT_2.json (3 files) holds 9 "
            f"teacher outputs but {tmp_path / 'anli1' / 'anli1_train.json'} has 10 examples") in message
    assert "regenerate the teacher outputs" in message
    assert snapshot(tmp_path) == before  # nothing written into the data dir
    assert len(load_examples("anli1", "train", str(tmp_path), with_teacher=False)) == 9  # 10 minus valid


def test_unreadable_bytes(tmp_path):
    (tmp_path / "anli1").mkdir()
    (tmp_path / "anli1" / "anli1_test.json").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match=r"cannot read .*anli1_test.json .*it must be UTF-8 JSON lines"):
        load_examples("anli1", "test", str(tmp_path))
