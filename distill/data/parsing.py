"""Teacher completions -> (rationale, label), per dataset answer style.

The teacher is prompted few-shot, so a raw completion answers the question
and then often runs on into an invented next exemplar:

    "... only math problem has to do with the above problem. So the answer is
     (d) math problem.\\n\\nQ: \\"The man was so hungry ...\\"\\nAnswer Choices: ..."

`parse_completion` keeps the text before the run-on, splits it at the
answer phrase of the dataset's style, and normalizes the label:

    cqa   "<rationale> So the answer is (c) wooded area."  -> label "wooded area"
    svamp "<rationale> The answer is (84 / 2)."            -> label "(84 / 2)"
    anli1 "<rationale> So the answer is neutral."           -> label "neutral"
    esnli "<rationale>\\nAnswer: contradiction"             -> label "contradiction"

It never raises on any text: an answerless, truncated or ambiguous output
(e.g. cqa "So the answer is either (a) x or (e) y.") comes back with
ok=False and a one-phrase `error`, so loaders can count failures and the
rationale task can skip them. `rationale`/`label` hold whatever part was
recovered (a label without a rationale is still scored as the teacher's
answer), and `ok` is True only when both are present.
"""
import dataclasses
import re

from distill.data.equations import safe_eval
from distill.data.specs import get_spec

# The run-on continuation starts at a blank line (the few-shot separator) or
# at a new exemplar header on its own line.
_RUN_ON = re.compile(r"\n[ \t]*\n|\n[ \t]*(?:Q|Question|Premise|Hypothesis)[ \t]*:")
_ECHO = re.compile(r"\n[ \t]*A[ \t]*:")

# Answer phrases, matched case-insensitively; the last match in the kept
# text is the answer (the rationale may quote earlier "the answer is ...").
_ANSWER_PHRASES = {
    "choice": re.compile(r"so the answer is", re.IGNORECASE),
    "equation": re.compile(r"(?:so )?the answer is", re.IGNORECASE),
    "so_the_answer": re.compile(r"so the answer is", re.IGNORECASE),
    "answer_line": re.compile(r"(?:^|\n)[ \t]*answer[ \t]*:", re.IGNORECASE),
    "generic": re.compile(r"(?:so )?the answer is|(?:^|\n)[ \t]*answer[ \t]*:", re.IGNORECASE),
}
_CHOICE_LETTER = re.compile(r"\(([a-zA-Z])\)")


@dataclasses.dataclass(frozen=True)
class ParsedCompletion:
    """One parsed teacher completion.

    rationale: the reasoning before the answer phrase (stripped), or None.
    label: the answer normalized to the dataset's label space, or None.
    ok: both rationale and label were recovered.
    error: why not, when ok is False (e.g. "no 'The answer is' in the completion").
    """

    rationale: str | None
    label: str | None
    ok: bool
    error: str | None


def cut_run_on(text: str) -> str:
    """The completion up to the few-shot continuation, stripped.

    A completion that first echoes the question ("<question>\nA: <answer>")
    keeps only what follows the last "A:", as if the echo were not there.
    """
    text = text.strip()
    match = _RUN_ON.search(text)
    kept = text[: match.start()] if match else text
    return _ECHO.split(kept)[-1].strip()


def _collapse(text: str) -> str:
    return " ".join(text.split())


def normalize_text(label: str) -> str:
    """Whitespace collapsed, a trailing "." or "!" dropped, lowercased.

    "Wooded  area." -> "wooded area", "Neutral" -> "neutral".
    """
    return _collapse(str(label)).rstrip(".!").strip().lower()


def normalize_label(dataset: str, label: str) -> str:
    """The canonical form of a label for comparison and targets.

    svamp: whitespace collapsed only (equations are compared by value).
    Every other dataset: `normalize_text`.
    """
    if get_spec(dataset).answer_style == "equation":
        return _collapse(str(label))
    return normalize_text(label)


def _answer_text(tail: str) -> str:
    """The answer clause after the answer phrase: its first line, stripped (and a leading ":")."""
    return tail.strip().split("\n", 1)[0].strip().lstrip(":").strip()


def _parse_choice(answer: str) -> tuple[str | None, str | None]:
    letters = {letter.lower() for letter in _CHOICE_LETTER.findall(answer)}
    if not letters:
        return None, f"no answer choice letter in {answer[:60]!r}"
    if len(letters) > 1:
        return None, f"more than one answer choice in {answer[:60]!r}"
    text = _CHOICE_LETTER.split(answer, maxsplit=1)[2]
    label = normalize_label("cqa", text)
    if not label:
        return None, f"answer choice without text in {answer[:60]!r}"
    return label, None


def _parse_equation(answer: str) -> tuple[str | None, str | None]:
    expression = answer[:-1] if answer.endswith(".") else answer
    expression = _collapse(expression)
    if safe_eval(expression) is None:
        return None, f"answer {expression[:60]!r} is not an arithmetic expression"
    return expression, None


def _parse_in_space(dataset: str, answer: str, space: tuple[str, ...] | None) -> tuple[str | None, str | None]:
    label = normalize_label(dataset, answer)
    if not label:
        return None, "empty answer"
    if space is not None and label not in space:
        return None, f"answer {label[:60]!r} is not one of {', '.join(space)}"
    return label, None


def parse_completion(dataset: str, text: str) -> ParsedCompletion:
    """Split a raw teacher completion into rationale and normalized label.

    Never raises for any `text` (None or non-strings included); only an
    unknown `dataset` name raises UserError.
    """
    spec = get_spec(dataset)
    if not isinstance(text, str) or not text.strip():
        return ParsedCompletion(None, None, False, "empty completion")
    kept = cut_run_on(text)
    phrase = _ANSWER_PHRASES[spec.answer_style]
    matches = list(phrase.finditer(kept))
    if not matches:
        return ParsedCompletion(None, None, False, "no answer phrase in the completion")
    last = matches[-1]
    rationale = kept[: last.start()].strip() or None
    answer = _answer_text(kept[last.end():])
    if spec.answer_style == "choice":
        label, error = _parse_choice(answer)
    elif spec.answer_style == "equation":
        label, error = _parse_equation(answer)
    else:
        label, error = _parse_in_space(dataset, answer, spec.label_space)
    if error is None and rationale is None:
        error = "no rationale before the answer"
    return ParsedCompletion(rationale, label, error is None, error)
