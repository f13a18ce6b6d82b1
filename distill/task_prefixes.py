"""The input prefix of each task: what a student learns to see before a label or a rationale input.

Plain data and checks, no jax or TensorFlow, so the model-dir reader (distill/run_dir.py), the
command-line front ends and the Hugging Face side of scripts/bench_predict.py can use it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distill.errors import UserError

# The input prefix of each task, unless a run sets its own (`train`'s label_prefix / rationale_prefix,
# gin macros LABEL_PREFIX / RATIONALE_PREFIX). A run records the ones it trained with in run.json, and
# an export in config.json's `task_specific_params`, so evaluation, `distill predict` and `distill serve`
# prefix inputs the way the model learned them.
TASK_PREFIXES = {"label": "[label] ", "rationale": "[rationale] "}
MAX_PREFIX_CHARS = 100


def checked_prefixes(label_prefix: object, rationale_prefix: object) -> dict[str, str]:
    """{"label": ..., "rationale": ...} for a run, or UserError naming the bad one.

    Each a string of at most MAX_PREFIX_CHARS characters on one line; the two must differ, or a
    step-by-step student could not tell which task an input asks for (one may be empty: the paper's
    code trains standard fine-tuning on bare inputs).
    """
    prefixes = {"label": label_prefix, "rationale": rationale_prefix}
    for task, prefix in prefixes.items():
        macro = f"{task.upper()}_PREFIX"
        if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX_CHARS or "\n" in prefix:
            raise UserError(f"{macro}={prefix!r} must be a string of at most {MAX_PREFIX_CHARS} characters on one "
                            f"line (default {TASK_PREFIXES[task]!r})")
    if label_prefix == rationale_prefix:
        raise UserError(f"LABEL_PREFIX and RATIONALE_PREFIX are both {label_prefix!r}: the student could not tell the "
                        "tasks apart; give them different prefixes")
    return prefixes  # type: ignore[return-value]


def environment_prefixes(environ: Mapping[str, str]) -> dict[str, str]:
    """The prefixes of $DISTILL_LABEL_PREFIX / $DISTILL_RATIONALE_PREFIX (each defaulting to TASK_PREFIXES):
    what upstream T5X runs, which register their tasks from the environment (distill/registered_tasks.py),
    and their exports use. UserError when they are bad."""
    try:
        return checked_prefixes(environ.get("DISTILL_LABEL_PREFIX", TASK_PREFIXES["label"]),
                                environ.get("DISTILL_RATIONALE_PREFIX", TASK_PREFIXES["rationale"]))
    except UserError as err:
        raise UserError(f"{err} (from DISTILL_LABEL_PREFIX / DISTILL_RATIONALE_PREFIX)") from None


def recorded_prefixes(recorded: object, source: str) -> dict[str, str]:
    """The prefixes a run or an export recorded (run.json "task_prefixes"), TASK_PREFIXES when it recorded
    none (runs that predate the setting); UserError when the record is malformed."""
    if recorded is None:
        return dict(TASK_PREFIXES)
    if not isinstance(recorded, Mapping) or set(recorded) != set(TASK_PREFIXES):
        raise UserError(f"{source}: task prefixes {recorded!r} must map exactly 'label' and 'rationale' to strings")
    try:
        return checked_prefixes(recorded["label"], recorded["rationale"])
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def task_prefixes_to_hf(task_prefixes: Mapping[str, str]) -> dict:
    """config.json's `task_specific_params` for the run's task prefixes (transformers' own place for
    T5's "summarize: "-style prefixes): {"label": {"prefix": ...}, "rationale": {"prefix": ...}}."""
    return {task: {"prefix": prefix} for task, prefix in task_prefixes.items()}


def task_prefixes_from_hf(hf_config: Mapping[str, Any], source: str) -> dict[str, str]:
    """The task prefixes an export recorded in `task_specific_params`, else the defaults (any other T5)."""
    params = hf_config.get("task_specific_params")
    if not isinstance(params, Mapping) or not all(isinstance(params.get(task), Mapping) for task in TASK_PREFIXES):
        return dict(TASK_PREFIXES)
    return recorded_prefixes({task: params[task].get("prefix") for task in TASK_PREFIXES}, source)
