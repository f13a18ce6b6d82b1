"""Few-shot chain-of-thought prompts, built from exemplar data files.

Each dataset's exemplars live in `distill/teacher/exemplars/<dataset>.json`
(written for this project), replaceable with `--exemplars FILE` of the same
shape:

    {"dataset": "svamp", "instruction": "Solve each math word problem ...",
     "exemplars": [{"input": "<normalized input>", "rationale": "...", "label": "(14 - 5)"}, ...]}

`input` is in the data layer's normalized form (cqa: question plus
"Answer Choices:\\n(a) ..." lines; NLI: "Premise: ...\\nHypothesis: ..."), and
each exemplar's answer is written in the phrasing the data layer's parser
reads, so the teacher imitates it:

    cqa    "<rationale> So the answer is (b) refrigerator."
    svamp  "<rationale> The answer is (14 - 5)."
    anli1  "<rationale> So the answer is neutral."
    esnli  "<rationale>\\nAnswer: contradiction"
    jsonl  "<rationale> So the answer is negative."

Loading checks every exemplar through `distill.data.parsing.parse_completion`
(the single parser) and rejects a file whose answers it cannot read back.

Two renderings of the same prompt:
- completion: "<instruction>\\n\\nQ: <input>\\nA: <answer>\\n\\n...Q: <input>\\nA:"
- chat: a system message with the instruction, then user "Q: <input>" /
  assistant "<answer>" turns, then the question as the last user message.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

from distill.data.parsing import normalize_label, parse_completion
from distill.data.specs import get_spec
from distill.errors import UserError

EXEMPLAR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exemplars")

# Where a completion-rendered answer ends: the next few-shot question.
COMPLETION_STOP = ("\n\nQ:",)

_CHOICE_LINE = re.compile(r"^\(([a-z])\)[ \t]*(.+?)[ \t]*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Exemplar:
    input: str
    rationale: str
    label: str


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """A dataset's instruction and exemplars; `source` names the file (for messages)."""

    dataset: str
    instruction: str
    exemplars: tuple[Exemplar, ...]
    source: str


def answer_text(dataset: str, example_input: str, rationale: str, label: str) -> str:
    """The full answer (rationale + answer sentence) in the phrasing the parser reads.

    For cqa the letter comes from the "(x) text" choice line matching `label`;
    UserError when no choice matches.
    """
    style = get_spec(dataset).answer_style
    rationale = rationale.strip()
    if style == "choice":
        wanted = normalize_label(dataset, label)
        for letter, text in _CHOICE_LINE.findall(example_input):
            if normalize_label(dataset, text) == wanted:
                return f"{rationale} So the answer is ({letter}) {text}."
        raise UserError(f"cqa answer {label!r} is not one of the '(x) choice' lines of its input")
    if style == "equation":
        return f"{rationale} The answer is {label.strip()}."
    if style == "answer_line":
        return f"{rationale}\nAnswer: {label.strip()}"
    return f"{rationale} So the answer is {label.strip()}."


def _question(example_input: str) -> str:
    return f"Q: {example_input.strip()}"


# The few-shot part is the same for every example of a run; it is built once per PromptSet (frozen,
# hashable), since a run renders each of its 10^4-10^6 prompts twice (for its cache key, then to send it).
@functools.lru_cache(maxsize=16)
def _completion_prefix(prompts: PromptSet) -> str:
    shots = [f"{_question(e.input)}\nA: {answer_text(prompts.dataset, e.input, e.rationale, e.label)}"
             for e in prompts.exemplars]
    return "".join(part + "\n\n" for part in ([prompts.instruction] if prompts.instruction else []) + shots)


@functools.lru_cache(maxsize=16)
def _chat_prefix(prompts: PromptSet) -> tuple[dict[str, str], ...]:
    messages = [{"role": "system", "content": prompts.instruction +
                 " Follow the format of the examples exactly: reasoning first, then the answer sentence."}]
    for e in prompts.exemplars:
        messages.append({"role": "user", "content": _question(e.input)})
        messages.append({"role": "assistant", "content": answer_text(prompts.dataset, e.input, e.rationale, e.label)})
    return tuple(messages)


def render_completion(prompts: PromptSet, example_input: str) -> str:
    """Plain-text few-shot prompt ending in "A:"; the model continues with the answer."""
    return f"{_completion_prefix(prompts)}{_question(example_input)}\nA:"


def render_chat(prompts: PromptSet, example_input: str) -> list[dict[str, str]]:
    """Chat messages: system instruction, exemplar turns, then the question.

    The exemplar messages are shared between the prompts of a run: read them, never change them.
    """
    return [*_chat_prefix(prompts), {"role": "user", "content": _question(example_input)}]


def default_exemplars_path(dataset: str) -> str:
    get_spec(dataset)  # UserError for an unknown dataset
    return os.path.join(EXEMPLAR_DIR, f"{dataset}.json")


def _check_exemplar(dataset: str, exemplar: Exemplar, where: str) -> None:
    """The parser must read back the exemplar's own rationale and label."""
    text = answer_text(dataset, exemplar.input, exemplar.rationale, exemplar.label)
    parsed = parse_completion(dataset, " " + text)
    if not parsed.ok or parsed.label != normalize_label(dataset, exemplar.label):
        reason = parsed.error or f"parsed label {parsed.label!r} != {exemplar.label!r}"
        raise UserError(f"{where}: the parser cannot read this exemplar back ({reason}); "
                        "keep rationales on one paragraph and labels in the dataset's label format")


def load_exemplars(dataset: str, path: str | None = None) -> PromptSet:
    """The dataset's PromptSet from `path` (default: the shipped file), validated."""
    path = path or default_exemplars_path(dataset)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"exemplars file {path} not found; pass --exemplars FILE") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"exemplars file {path} is not valid JSON ({err}); "
                        "see distill/teacher/exemplars/ for the shape") from None
    items = data.get("exemplars") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise UserError(f'{path}: expected {{"instruction": str, '
                        f'"exemplars": [{{"input", "rationale", "label"}}, ...]}}')
    exemplars = []
    for index, item in enumerate(items):
        where = f"{path}: exemplar {index}"
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                 for k in ("input", "rationale", "label")):
            raise UserError(f"{where}: needs non-empty string fields input, rationale, label")
        exemplar = Exemplar(item["input"], item["rationale"], item["label"])
        try:
            _check_exemplar(dataset, exemplar, where)
        except UserError as err:
            if str(err).startswith(where):
                raise
            raise UserError(f"{where}: {err}") from None
        exemplars.append(exemplar)
    return PromptSet(dataset, str(data.get("instruction") or ""), tuple(exemplars), path)
