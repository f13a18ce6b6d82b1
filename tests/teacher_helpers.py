"""Small data dirs and runners shared by the teacher tests.

`make_data_dir` writes svamp and cqa splits in the paper's raw record shapes
(the reference layout of DESIGN.md section 2), so most tests need neither the
real data nor network access; `run_cli` runs the real `distill teacher`
command in a subprocess.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

SVAMP_TEST = [
    {"input": f"Ann has {a} apples and buys {b} more.\nHow many apples does she have?", "label": f"( {a}.0 + {b}.0 )"}
    for a, b in [(3, 4), (10, 5), (7, 8), (12, 30), (6, 6), (9, 1), (14, 2), (20, 22), (5, 17), (8, 3),
                 (11, 13), (2, 19), (16, 4), (1, 1), (25, 5), (40, 2), (33, 3), (18, 9), (15, 15), (7, 21)]
]

CQA_CHOICES = ["kitchen", "garage", "library", "park", "office"]
CQA_TEST = [
    {"id": f"q{i}", "question": f"Where would you most likely find item number {i}?",
     "choices": CQA_CHOICES, "answer": CQA_CHOICES[i % 5],
     "abstractive_explanation": "", "extractive_explanation": ""}
    for i in range(12)
]


NLI_TEST = [
    {"premise": f"A person number {i} walks a dog in the park.", "hypothesis": f"Person {i} is outside.",
     "label": i % 3}
    for i in range(9)
]

JSONL_TEST = [{"id": f"r{i}", "input": f"Is review {i} positive or negative?", "label": ["positive", "negative"][i % 2]}
              for i in range(6)]


def write_lines(path: pathlib.Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_data_dir(root: pathlib.Path) -> pathlib.Path:
    """<root>/<name>/<name>_{train,test}.json for svamp and cqa, plus valid files for anli1
    and esnli (records in the paper's shapes), and <root>/jsonl/{train,test}.jsonl."""
    write_lines(root / "svamp" / "svamp_test.json", SVAMP_TEST)
    write_lines(root / "svamp" / "svamp_train.json", SVAMP_TEST[:10])
    write_lines(root / "cqa" / "cqa_test.json", CQA_TEST)
    write_lines(root / "cqa" / "cqa_train.json", CQA_TEST[:6])
    for name, id_key in (("anli1", "uid"), ("esnli", "id")):
        records = [{id_key: f"{name}-{i}", **r} for i, r in enumerate(NLI_TEST)]
        for split in ("train", "valid", "test"):
            write_lines(root / name / f"{name}_{split}.json", records)
    write_lines(root / "jsonl" / "test.jsonl", JSONL_TEST)
    write_lines(root / "jsonl" / "train.jsonl", JSONL_TEST)
    return root


def cli_env(api_key: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OPENAI_API_KEY", None)
    if api_key is not None:
        env["TEACHER_TEST_KEY"] = api_key
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distill.teacher.cli", *args]


def run_cli(*args: str, api_key: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=cli_env(api_key), capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
