"""Dataset specifications: what each supported dataset is, as data.

A `DatasetSpec` says how a dataset's teacher completions end (its answer
style), which labels are legal, and how predictions are scored. Everything
else (file names, record shapes) lives in `distill.data.readers`.

    >>> get_spec("anli1").label_space
    ('entailment', 'neutral', 'contradiction')
"""
import dataclasses

from distill.errors import UserError

NLI_LABELS = ("entailment", "neutral", "contradiction")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset's fixed properties.

    name: the dataset name used on the command line and in task names.
    answer_style: how a teacher completion states its answer (see
      `distill.data.parsing`): "choice" ("So the answer is (c) text."),
      "equation" ("The answer is <expr>."), "so_the_answer" ("So the answer is
      neutral."), "answer_line" ("<rationale>\\nAnswer: <label>"), "generic".
    label_space: the legal labels, or None for free text (cqa's label is the
      chosen answer text, svamp's an equation).
    metric: "accuracy" (normalized exact match) or "equation_accuracy"
      (equal arithmetic values).
    has_valid_split: whether the paper's release ships a valid file; without
      one, valid is 10% of train (seed 0), as in the reference code.
    task_type: a short human description, shown by `distill data stats`.
    """

    name: str
    answer_style: str
    label_space: tuple[str, ...] | None
    metric: str
    has_valid_split: bool
    task_type: str


SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("svamp", "equation", None, "equation_accuracy", False, "arithmetic word problems"),
        DatasetSpec("cqa", "choice", None, "accuracy", False, "5-way commonsense multiple choice"),
        DatasetSpec("esnli", "answer_line", NLI_LABELS, "accuracy", True, "natural language inference"),
        DatasetSpec("anli1", "so_the_answer", NLI_LABELS, "accuracy", True, "adversarial NLI, round 1"),
        DatasetSpec("jsonl", "generic", None, "accuracy", False, "your own JSON-lines dataset"),
    )
}

# The paper's datasets (read from the reference layout), without the generic "jsonl".
DATASET_NAMES: tuple[str, ...] = ("svamp", "cqa", "esnli", "anli1")


def get_spec(name: str) -> DatasetSpec:
    """The spec of a dataset; UserError naming the known ones for anything else."""
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        known = ", ".join(SPECS)
        raise UserError(f"unknown dataset {name!r}; known datasets: {known}") from None
