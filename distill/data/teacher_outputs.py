"""Cached teacher outputs of a split, aligned with its examples.

Two on-disk sources, both aligned by order with the split FILE
(`<name>_<split>.json` / `<split>.jsonl`), one output per example:

1. The project's own `<dataset dir>/<split>.teacher.jsonl`, written by
   `distill teacher`: one JSON line per example,
   `{"id", "input", "rationale", "teacher_label", "teacher_raw", "parse_ok", "error"}`
   (`teacher_raw` may be a list of samples, or `completions` stand in for
   it: the first sample is the one kept as `teacher_raw`). When a line has
   an `id`, it must equal the example's id, which catches files written for
   another split or order. A line with `rationale`, `teacher_label` or
   `parse_ok` is taken as the teacher module's verdict; a raw-only line
   has its `teacher_raw` parsed here.
2. The paper's `<dataset dir>/llm/<split>_CoT_<i>.json`, i = 0, 1, ...:
   JSON lists of raw completions, concatenated in i order, parsed here.

When both exist, the `.teacher.jsonl` wins: it is what the user produced
with this project (a newer teacher, another prompt) and the reference files
are the fallback that ships with the data. Nothing is mixed: one source
per split.

Each example gets `{"rationale", "teacher_label", "teacher_raw", "parse_ok"}`.
A derived valid split takes its outputs from the train files at the same
positions (the caller indexes the list this module returns).
"""
import json
import os
import re

from distill.data.parsing import normalize_label, parse_completion
from distill.data.readers import dataset_dir
from distill.jsonl import read_jsonl
from distill.errors import UserError

TEACHER_KEYS = ("rationale", "teacher_label", "teacher_raw", "parse_ok")


def teacher_jsonl_path(name: str, data_dir: str, split: str) -> str:
    """Where `distill teacher` writes (and this module reads) a split's outputs."""
    return os.path.join(dataset_dir(name, data_dir), f"{split}.teacher.jsonl")


def cot_paths(name: str, data_dir: str, split: str) -> list[str]:
    """The reference `llm/<split>_CoT_<i>.json` files, i = 0.., in order.

    UserError when the numbering has a gap (a missing block would silently
    misalign every later output).
    """
    folder = os.path.join(dataset_dir(name, data_dir), "llm")
    if not os.path.isdir(folder):
        return []
    pattern = re.compile(rf"{re.escape(split)}_CoT_(\d+)\.json")
    by_number: dict[int, list[str]] = {}
    for entry in sorted(os.listdir(folder)):
        match = pattern.fullmatch(entry)
        if match:
            by_number.setdefault(int(match.group(1)), []).append(entry)
    clashes = [names for names in by_number.values() if len(names) > 1]
    if clashes:
        raise UserError(f"{folder}: {' and '.join(clashes[0])} are the same block number; keep one of them")
    found = sorted(by_number)
    if found != list(range(len(found))):
        missing = min(set(range(max(found) + 1)) - set(found))
        raise UserError(
            f"{os.path.join(folder, f'{split}_CoT_{missing}.json')} is missing but later blocks exist; "
            f"the {split}_CoT_<i>.json files must be numbered 0, 1, 2, ... without gaps"
        )
    return [os.path.join(folder, by_number[i][0]) for i in found]


def _from_completion(name: str, raw: object) -> dict:
    parsed = parse_completion(name, raw if isinstance(raw, str) else "")
    return {"rationale": parsed.rationale, "teacher_label": parsed.label,
            "teacher_raw": raw if isinstance(raw, str) else None, "parse_ok": parsed.ok}


def _read_cot(name: str, paths: list[str]) -> list[dict]:
    outputs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                completions = json.load(handle)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); "
                            "a teacher file must be one JSON list of completions") from None
        if not isinstance(completions, list):
            raise UserError(f"{path}: expected a JSON list of completions, got {type(completions).__name__}")
        outputs += [_from_completion(name, raw) for raw in completions]
    return outputs


def _first_completion(record: dict) -> str | None:
    """teacher_raw as a string, or the first of a list of samples (`teacher_raw` or `completions`)."""
    for key in ("teacher_raw", "completions"):
        value = record.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, str):
            return value
    return None


def _from_teacher_record(name: str, record: dict) -> dict:
    raw = _first_completion(record)
    if not any(key in record for key in ("rationale", "teacher_label", "parse_ok")):
        return _from_completion(name, raw)  # a raw-only line: parse it here
    rationale, label = record.get("rationale"), record.get("teacher_label")
    label = None if label is None else normalize_label(name, label)
    ok = bool(record.get("parse_ok", True)) and bool(rationale) and bool(label)
    return {"rationale": rationale, "teacher_label": label, "teacher_raw": raw, "parse_ok": ok}


def _read_teacher_jsonl(name: str, path: str, example_ids: list[str], split_file: str) -> list[dict]:
    outputs = []
    for position, (number, record) in enumerate(read_jsonl(path, hint="check --data-dir / DISTILL_DATA_DIR")):
        if "id" in record and position < len(example_ids) and str(record["id"]) != example_ids[position]:
            raise UserError(
                f"{path}:{number}: id {record['id']!r} does not match example {position} of {split_file} "
                f"({example_ids[position]!r}); the teacher file is for another split or order, rerun `distill teacher`"
            )
        outputs.append(_from_teacher_record(name, record))
    return outputs


def _check_length(outputs: list[dict], source: str, example_ids: list[str], split_file: str) -> None:
    if len(outputs) != len(example_ids):
        raise UserError(
            f"teacher/split length mismatch: {source} holds {len(outputs)} teacher outputs but {split_file} "
            f"has {len(example_ids)} examples; they must align one per example, in order "
            "(regenerate the teacher outputs for this split or remove them)"
        )


def load_teacher_outputs(name: str, data_dir: str, split: str, example_ids: list[str],
                         split_file: str) -> list[dict] | None:
    """Teacher outputs aligned with a split file's examples, or None if there are none.

    example_ids: ids of the split file's examples in file order, [n].
    Returns n dicts with TEACHER_KEYS; UserError when counts or ids disagree.
    """
    jsonl = teacher_jsonl_path(name, data_dir, split)
    if os.path.exists(jsonl):
        outputs = _read_teacher_jsonl(name, jsonl, example_ids, split_file)
        _check_length(outputs, jsonl, example_ids, split_file)
        return outputs
    paths = cot_paths(name, data_dir, split)
    if not paths:
        return None
    outputs = _read_cot(name, paths)
    source = paths[0] if len(paths) == 1 else f"{paths[0]} .. {os.path.basename(paths[-1])} ({len(paths)} files)"
    _check_length(outputs, source, example_ids, split_file)
    return outputs


def inline_teacher_outputs(name: str, raw_records: list[dict]) -> list[dict] | None:
    """Teacher fields carried inside generic JSONL records, or None if none carries any."""
    if not any(record.get("rationale") is not None or record.get("teacher_label") is not None
               or record.get("teacher_raw") is not None for record in raw_records):
        return None
    return [_from_teacher_record(name, record) for record in raw_records]
