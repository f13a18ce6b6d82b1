"""Raw dataset files -> normalized `{"id", "input", "label"}` records.

Reference layout (the paper's `datasets.zip`, see README.md's Datasets section):

    <root>/<name>/<name>_{train,valid,test}.json   JSON lines, one record a line

and for the generic "jsonl" dataset, a folder of `{train,valid,test}.jsonl`.
Raw record shapes, and what they become:

    svamp  {"input", "label": "( 84.0 / 2.0 )"}
           -> id "svamp-<split>-<line index>", input as is, label the equation
    cqa    {"id", "question", "choices": [5], "answer", ...explanations}
           -> input "<question>\\nAnswer Choices:\\n(a) c0\\n(b) c1 ... (e) c4"
              (the reference code's format), label = the answer text
    anli1  {"uid", "premise", "hypothesis", "label": 0|1|2, "reason"}
    esnli  {"premise", "hypothesis", "label": 0|1|2, "explanation_1..3"}
           -> input "Premise: <p>\\nHypothesis: <h>", label 0/1/2 ->
              entailment/neutral/contradiction
    jsonl  {"id"?, "input", "label"?, "rationale"?, "teacher_label"?, "teacher_raw"?}
           -> id defaults to "<split>-<line index>", a missing label is "".

NLI input: the reference code joins premise and hypothesis with the HF
tokenizer's EOS text "</s>", which only a Hugging Face tokenizer turns into
a special token (SentencePiece through SeqIO would spell it out as
characters). We write the "Premise: ...\\nHypothesis: ..." form that the
paper's teacher prompts use instead.

Every problem is a UserError naming the file and line and the fix.
"""
import os
from collections.abc import Callable

from distill.data.specs import NLI_LABELS
from distill.errors import UserError
from distill.jsonl import read_jsonl

SPLITS = ("train", "valid", "test")


def dataset_dir(name: str, data_dir: str) -> str:
    """The folder holding one dataset's files (data_dir itself for "jsonl")."""
    return data_dir if name == "jsonl" else os.path.join(data_dir, name)


def split_path(name: str, data_dir: str, split: str) -> str:
    """The file a split is read from (whether or not it exists)."""
    if name == "jsonl":
        return os.path.join(data_dir, f"{split}.jsonl")
    return os.path.join(data_dir, name, f"{name}_{split}.json")


def _field(record: dict, key: str, where: str) -> object:
    if key not in record or record[key] is None:
        raise UserError(f"{where}: record has no {key!r} field; every record of this dataset needs one")
    return record[key]


def _text(record: dict, key: str, where: str) -> str:
    value = _field(record, key, where)
    if not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return str(value)


def _nli_label(record: dict, where: str) -> str:
    value = _field(record, "label", where)
    if isinstance(value, str) and value.strip().lower() in NLI_LABELS:
        return value.strip().lower()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(NLI_LABELS):
        return NLI_LABELS[value]
    raise UserError(f"{where}: label {value!r} is not 0/1/2 or one of {', '.join(NLI_LABELS)}")


def _svamp(record: dict, split: str, index: int, where: str) -> dict:
    return {"id": f"svamp-{split}-{index}", "input": _text(record, "input", where),
            "label": _text(record, "label", where)}


def _cqa(record: dict, split: str, index: int, where: str) -> dict:
    choices = _field(record, "choices", where)
    if not isinstance(choices, list) or not choices or len(choices) > 26:
        raise UserError(f"{where}: 'choices' must be a non-empty list of answer texts")
    lines = [_text(record, "question", where), "Answer Choices:"]
    lines += [f"({chr(ord('a') + i)}) {choice}" for i, choice in enumerate(choices)]
    return {"id": str(record.get("id") or f"cqa-{split}-{index}"), "input": "\n".join(lines),
            "label": _text(record, "answer", where)}


def _nli(prefix: str, id_key: str) -> Callable[[dict, str, int, str], dict]:
    def normalize(record: dict, split: str, index: int, where: str) -> dict:
        premise, hypothesis = _text(record, "premise", where), _text(record, "hypothesis", where)
        return {"id": str(record.get(id_key) or f"{prefix}-{split}-{index}"),
                "input": f"Premise: {premise}\nHypothesis: {hypothesis}",
                "label": _nli_label(record, where)}
    return normalize


def _jsonl(record: dict, split: str, index: int, where: str) -> dict:
    label = record.get("label")
    return {"id": str(record.get("id") or f"{split}-{index}"), "input": _text(record, "input", where),
            "label": "" if label is None else str(label)}


_NORMALIZERS: dict[str, Callable[[dict, str, int, str], dict]] = {
    "svamp": _svamp,
    "cqa": _cqa,
    "esnli": _nli("esnli", "id"),
    "anli1": _nli("anli1", "uid"),
    "jsonl": _jsonl,
}

# Inline teacher fields a generic JSONL record may carry.
INLINE_TEACHER_KEYS = ("rationale", "teacher_label", "teacher_raw")


def read_split(name: str, data_dir: str, split: str) -> tuple[list[dict], list[dict]]:
    """Normalized records of one split file, in file order, plus raw records.

    Returns (examples, raw) with examples[i] = {"id", "input", "label"} and
    raw[i] the record as read (the generic dataset keeps inline teacher
    fields there). Raises UserError when the file is missing or malformed.
    """
    path = split_path(name, data_dir, split)
    normalize = _NORMALIZERS[name]
    examples, raw = [], []
    for index, (number, record) in enumerate(read_jsonl(path, hint="check --data-dir / DISTILL_DATA_DIR")):
        examples.append(normalize(record, split, index, f"{path}:{number}"))
        raw.append(record)
    return examples, raw
