"""`distill data stats` through the real CLI dispatcher."""
import json

from data_helpers import write_anli1, write_json_lines
from distill.cli import main as cli_main
from distill.data.stats import main as stats_main


def test_stats_json_on_real_svamp(shared_data_dir, capsys):
    assert cli_main(["data", "stats", "--dataset", "svamp", "--data-dir", str(shared_data_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert list(stats) == ["train", "valid", "test"]
    assert {split: (row["examples"], row["teacher_outputs"], row["parse_failures"]) for split, row in stats.items()} \
        == {"train": (720, 720, 32), "valid": (80, 80, 2), "test": (200, 200, 7)}
    assert stats["test"]["teacher_accuracy"] == 0.775 and stats["valid"]["teacher_accuracy"] == 0.8
    assert all(set(row) == {"examples", "teacher_outputs", "parse_failures", "teacher_accuracy"}
               for row in stats.values())


def test_stats_text_form_uses_env_data_dir(shared_data_dir, capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data_dir))
    assert stats_main(["--dataset", "svamp"]) == 0
    out = capsys.readouterr().out
    assert "test        200             200              7        3.50%           0.7750" in out
    assert "all teacher outputs: 1000, parsed 959, parse failures 41 (4.10%)" in out
    assert "valid = 10% of the train file (seed 0" in out


def test_stats_without_teacher_or_gold(tmp_path, capsys):
    write_anli1(tmp_path, {"train": 4, "valid": 2, "test": 2}, with_cot=False)
    assert cli_main(["data", "stats", "--dataset", "anli1", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        split: {"examples": n, "teacher_outputs": 0, "parse_failures": 0, "teacher_accuracy": None}
        for split, n in (("train", 4), ("valid", 2), ("test", 2))}
    folder = tmp_path / "mine"
    write_json_lines(folder / "train.jsonl", [{"input": "q", "teacher_raw": "r. So the answer is a."}] * 10)
    write_json_lines(folder / "test.jsonl", [{"input": "q", "label": "a"}])
    assert cli_main(["data", "stats", "--dataset", "jsonl", "--data-dir", str(folder), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"] == {"examples": 9, "teacher_outputs": 9, "parse_failures": 0, "teacher_accuracy": None}
    assert stats["test"]["teacher_accuracy"] is None


def test_stats_bad_input_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    assert cli_main(["data", "stats", "--dataset", "svamp"]) == 2
    assert capsys.readouterr().err == "error: no data dir given; pass --data-dir DIR or set DISTILL_DATA_DIR\n"
    assert cli_main(["data", "stats", "--dataset", "svampp", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'svampp'; known datasets: svamp")
    assert cli_main(["data", "stats", "--dataset", "svamp", "--data-dir", str(tmp_path / "gone")]) == 2
    assert f"error: data dir {tmp_path / 'gone'} does not exist" in capsys.readouterr().err
