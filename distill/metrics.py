"""Label-task metrics, in SeqIO's metric_fn signature.

Each function takes lists of strings (gold targets, model predictions) and
returns {"accuracy": fraction in [0, 1]}:

- `accuracy`: exact match after `normalize_text` (whitespace collapsed,
  trailing period dropped, lowercased), for cqa, anli1, esnli and JSONL.
- `equation_accuracy`: SVAMP. Target and prediction are equations scored
  by value with `safe_eval` (never Python's eval); an expression that does
  not evaluate (names, `**`, division by zero, garbage) scores wrong. Values
  agree within a 1e-9 relative/absolute tolerance: equivalent equations
  differ only by float rounding, wrong ones by far more.

    >>> equation_accuracy(["( 84.0 / 2.0 )"], ["(84 / 2)"])
    {'accuracy': 1.0}

Empty inputs score 0.0 (no examples, nothing right).
"""
from collections.abc import Callable, Sequence

from distill.data.equations import safe_eval, same_value
from distill.data.parsing import normalize_text
from distill.data.specs import get_spec

__all__ = ["accuracy", "equation_accuracy", "metric_fn_for", "safe_eval", "strip_whitespace"]

MetricFn = Callable[[Sequence[str], Sequence[str]], dict]


def _check_lengths(targets: Sequence[str], predictions: Sequence[str]) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """Fraction of predictions equal to their target after label normalization."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"accuracy": 0.0}
    correct = sum(normalize_text(t) == normalize_text(p) for t, p in zip(targets, predictions))
    return {"accuracy": correct / len(targets)}


def equation_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """Fraction of predicted equations whose value equals the target equation's."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"accuracy": 0.0}
    correct = sum(same_value(safe_eval(str(t)), safe_eval(str(p))) for t, p in zip(targets, predictions))
    return {"accuracy": correct / len(targets)}


_METRICS: dict[str, MetricFn] = {"accuracy": accuracy, "equation_accuracy": equation_accuracy}


def metric_fn_for(dataset: str) -> MetricFn:
    """The dataset's label metric (UserError for an unknown dataset)."""
    return _METRICS[get_spec(dataset).metric]


def strip_whitespace(output: str | bytes, example: dict | None = None, is_target: bool = False) -> str:
    """Postprocessor of label tasks: predictions and targets compared as stripped strings."""
    del example, is_target
    return output.decode("utf-8").strip() if isinstance(output, bytes) else str(output).strip()
