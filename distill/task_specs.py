"""The tasks and mixtures of the method as plain data (no seqio, no TensorFlow).

distill/tasks.py registers them with seqio; training checks a mixture name
and picks its evaluation tasks from here, so the training process needs no
TensorFlow when its batches come from distill/train_feed.py.
"""
from __future__ import annotations

import dataclasses

from distill.losses import LABEL_TASK, RATIONALE_TASK
from distill.task_prefixes import TASK_PREFIXES


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """One task as data: which text it reads, what it predicts, how it is scored.

    `train_target` / `eval_target` name the record field used as the target on
    the train split / the validation and test splits ("label",
    "teacher_label" or "rationale"). Examples with an empty target, or a
    teacher target whose completion failed to parse, are left out.
    """

    suffix: str  # task name = f"{prefix}_{suffix}"
    task_id: int
    input_prefix: str
    train_target: str
    eval_target: str
    with_metrics: bool


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    """A mixture as data: name suffix and the suffixes of its tasks."""

    suffix: str
    task_suffixes: tuple[str, ...]


def task_configs(label_prefix: str = TASK_PREFIXES["label"],
                 rationale_prefix: str = TASK_PREFIXES["rationale"]) -> tuple[TaskConfig, ...]:
    """The three tasks of the method (see distill/tasks.py's docstring)."""
    return (
        TaskConfig("label_gt", LABEL_TASK, label_prefix, "label", "label", with_metrics=True),
        TaskConfig("label_llm", LABEL_TASK, label_prefix, "teacher_label", "label", with_metrics=True),
        TaskConfig("rationale", RATIONALE_TASK, rationale_prefix, "rationale", "rationale", with_metrics=False),
    )


MIXTURES = (
    MixtureConfig("step_by_step_gt", ("label_gt", "rationale")),
    MixtureConfig("step_by_step_llm", ("label_llm", "rationale")),
)


def task_and_mixture_names(prefix: str) -> list[str]:
    """Every name `register_tasks` registers for a prefix: the tasks, then the mixtures."""
    return [f"{prefix}_{config.suffix}" for config in (*task_configs(), *MIXTURES)]
