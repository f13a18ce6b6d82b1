"""Self-consistency over n samples: majority-vote label, agreeing rationales kept.

With n > 1 samples per prompt (temperature > 0), the label most samples agree
on is the teacher's label (ties: the first sample's label among the tied),
and the rationales of the samples that reached it are kept; with
`gold_filter`, only rationales whose label matches the gold label are kept
(the paper's cleaner-rationale variant). Labels agree when the dataset's
metric says so: svamp equations by value, the rest by normalized text.

Every sample is parsed by the data layer's `parse_completion` (the single
parser); a sample it cannot read simply does not vote.
"""
from __future__ import annotations

import collections
import dataclasses

from distill.data.equations import safe_eval
from distill.data.parsing import normalize_label, parse_completion
from distill.data.specs import get_spec


@dataclasses.dataclass(frozen=True)
class Vote:
    """teacher_label: the majority label (None when no sample parsed).

    rationale: the first kept rationale (or, when no sample has a label, what
      the parser recovered of the first one); rationales: all kept, in sample order.
    parse_ok: both a label and a kept rationale exist. error: why not.
    """

    teacher_label: str | None
    rationale: str | None
    rationales: tuple[str, ...]
    parse_ok: bool
    error: str | None


def _agreement_key(dataset: str, label: str) -> object:
    """What two labels must share to count as the same answer."""
    if get_spec(dataset).answer_style == "equation":
        value = safe_eval(label)
        if value is not None:
            return round(value, 6)
    return normalize_label(dataset, label)


def vote(dataset: str, texts: list[str] | tuple[str, ...], *, gold: str | None = None,
         gold_filter: bool = False) -> Vote:
    """Combine n raw completions of one prompt into one teacher output."""
    parsed = [parse_completion(dataset, text) for text in texts]
    keyed = [(p, _agreement_key(dataset, p.label)) for p in parsed if p.label is not None]
    if not keyed:  # nothing to vote on: keep what the parser recovered from the first sample
        if not parsed:
            return Vote(None, None, (), False, "no completion")
        return Vote(None, parsed[0].rationale, (), False, parsed[0].error)
    counts = collections.Counter(key for _, key in keyed)
    best = max(counts.values())
    winner = next(key for _, key in keyed if counts[key] == best)  # first among the tied
    label = next(p.label for p, key in keyed if key == winner)
    wanted = winner
    if gold_filter and gold:
        wanted = _agreement_key(dataset, gold)
    rationales = tuple(p.rationale for p, key in keyed if key == wanted and p.rationale)
    if rationales:
        return Vote(label, rationales[0], rationales, True, None)
    if gold_filter and gold:
        error = "no sample's label matches the gold label"
    else:
        error = next((p.error for p, key in keyed if key == winner and p.error), "no rationale before the answer")
    return Vote(label, None, (), False, error)
