"""Fixture writers for the data-layer tests: small datasets in the documented shapes.

The paper's anli1/esnli files are not in ../shared/data, so tests write a
few records of each documented raw shape (DESIGN.md section 2) into
tmp_path, with teacher completions in the reference `llm/` layout or the
project's `<split>.teacher.jsonl`.
"""
import json
import pathlib

NLI_LABELS = ("entailment", "neutral", "contradiction")


def write_json_lines(path: pathlib.Path, records: list[dict]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def anli1_record(index: int) -> dict:
    """{uid, premise, hypothesis, label 0/1/2, reason}; label cycles 0, 1, 2."""
    return {"uid": f"uid-{index}", "premise": f"Premise number {index}.",
            "hypothesis": f"Hypothesis number {index}.", "label": index % 3, "reason": f"reason {index}"}


def esnli_record(index: int) -> dict:
    """{premise, hypothesis, label 0/1/2, explanation_1..3}; label cycles 0, 1, 2."""
    return {"premise": f"A man plays guitar {index}.", "hypothesis": f"A person makes music {index}.",
            "label": index % 3, "explanation_1": "e1", "explanation_2": "e2", "explanation_3": "e3"}


def anli1_completion(index: int, label: str | None = None) -> str:
    """A PaLM-style ANLI completion with a run-on next exemplar."""
    label = label or NLI_LABELS[index % 3]
    return (f"Reasoning about premise {index}. So the answer is {label}.\n\n"
            "Premise: Another premise.\nHypothesis: Another hypothesis.\nSo the answer is neutral.")


def esnli_completion(index: int, label: str | None = None) -> str:
    """An e-SNLI-style completion ("<rationale>\\nAnswer: <label>") with a run-on."""
    label = label or NLI_LABELS[index % 3]
    return f"Playing guitar is making music {index}.\nAnswer: {label}\n\nPremise: Next premise.\nHypothesis: x"


def write_reference_dataset(root: pathlib.Path, name: str, splits: dict[str, list[dict]],
                            completions: dict[str, list[list[str]]] | None = None) -> pathlib.Path:
    """Write <root>/<name>/<name>_<split>.json and llm/<split>_CoT_<i>.json blocks; returns root."""
    for split, records in splits.items():
        write_json_lines(root / name / f"{name}_{split}.json", records)
    for split, blocks in (completions or {}).items():
        (root / name / "llm").mkdir(parents=True, exist_ok=True)
        for i, block in enumerate(blocks):
            (root / name / "llm" / f"{split}_CoT_{i}.json").write_text(json.dumps(block), encoding="utf-8")
    return root


def write_anli1(root: pathlib.Path, sizes: dict[str, int], *, with_cot: bool = True, block: int = 4) -> pathlib.Path:
    """An anli1 dataset with the given split sizes and (optionally) CoT blocks of `block` completions."""
    splits = {split: [anli1_record(i) for i in range(n)] for split, n in sizes.items()}
    completions = None
    if with_cot:
        completions = {split: [[anli1_completion(i) for i in range(start, min(start + block, n))]
                               for start in range(0, n, block)] for split, n in sizes.items()}
    return write_reference_dataset(root, "anli1", splits, completions)


def snapshot(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under root, to prove nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}
