"""Prompts: shipped exemplars read back through the data layer's parser, both
renderings, user exemplar files, and the parser on the paper's real completions."""
import json

import pytest

from distill.data.parsing import parse_completion
from distill.data.specs import DATASET_NAMES
from distill.errors import UserError
from distill.teacher import prompts, voting


@pytest.mark.parametrize("dataset", DATASET_NAMES + ("jsonl",))
def test_shipped_exemplars_parse_back_to_their_labels(dataset):
    prompt_set = prompts.load_exemplars(dataset)
    assert len(prompt_set.exemplars) >= 3
    for exemplar in prompt_set.exemplars:
        text = prompts.answer_text(dataset, exemplar.input, exemplar.rationale, exemplar.label)
        parsed = parse_completion(dataset, text)
        assert parsed.ok, (dataset, text, parsed.error)
        assert parsed.rationale == exemplar.rationale.strip()


def test_cqa_answer_names_the_matching_choice_letter():
    question = "Q?\nAnswer Choices:\n(a) sea\n(b) wooded area"
    text = prompts.answer_text("cqa", question, "Beavers live in woods.", "wooded area")
    assert text == "Beavers live in woods. So the answer is (b) wooded area."
    with pytest.raises(UserError, match="not one of"):
        prompts.answer_text("cqa", "Q?\nAnswer Choices:\n(a) sea", "r", "desert")


def test_completion_rendering_is_few_shot_and_ends_at_the_answer_slot():
    prompt_set = prompts.load_exemplars("svamp")
    text = prompts.render_completion(prompt_set, "Tom has 3 cats.\nHow many cats?")
    assert text.startswith(prompt_set.instruction + "\n\nQ: ")
    assert text.endswith("\n\nQ: Tom has 3 cats.\nHow many cats?\nA:")
    assert text.count("\nA: ") == len(prompt_set.exemplars)
    assert text.count("The answer is (") == len(prompt_set.exemplars)


def test_chat_rendering_alternates_turns_and_ends_with_the_question():
    prompt_set = prompts.load_exemplars("esnli")
    messages = prompts.render_chat(prompt_set, "Premise: a\nHypothesis: b")
    assert messages[0]["role"] == "system" and prompt_set.instruction in messages[0]["content"]
    roles = [m["role"] for m in messages[1:]]
    assert roles == ["user", "assistant"] * len(prompt_set.exemplars) + ["user"]
    assert messages[-1]["content"] == "Q: Premise: a\nHypothesis: b"
    assert all(m["content"].split("\n")[-1].startswith("Answer: ") for m in messages[2::2])


def test_user_exemplars_file_replaces_the_shipped_one(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"instruction": "Be brief.", "exemplars": [
        {"input": "Premise: x\nHypothesis: y", "rationale": "Nothing links them.", "label": "neutral"}]}))
    prompt_set = prompts.load_exemplars("anli1", str(path))
    assert prompt_set.instruction == "Be brief." and len(prompt_set.exemplars) == 1
    assert "So the answer is neutral." in prompts.render_completion(prompt_set, "Premise: p\nHypothesis: h")


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"exemplars": []}), "expected"),
    (json.dumps({"exemplars": [{"input": "q", "rationale": "r"}]}), "exemplar 0: needs"),
    # A label outside anli1's label space: the parser could not read the teacher's imitation.
    (json.dumps({"exemplars": [{"input": "q", "rationale": "r", "label": "maybe"}]}), "exemplar 0: the parser cannot"),
])
def test_bad_exemplar_files_are_user_errors(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        prompts.load_exemplars("anli1", str(path))


@pytest.mark.parametrize("dataset, minimum_ok", [("svamp", 0.9), ("cqa", 0.9)])
def test_voting_on_real_paper_completions_matches_the_parser(shared_data_dir, dataset, minimum_ok):
    """The teacher's vote over one sample is exactly the data layer's parse of it."""
    completions = json.loads((shared_data_dir / dataset / "llm" / "test_CoT_0.json").read_text())[:300]
    ok = 0
    for text in completions:
        parsed = parse_completion(dataset, text)
        result = voting.vote(dataset, [text])
        assert (result.teacher_label, result.rationale, result.parse_ok) == (parsed.label, parsed.rationale, parsed.ok)
        ok += result.parse_ok
    assert ok >= minimum_ok * len(completions)


def test_vote_takes_the_majority_and_keeps_agreeing_rationales():
    texts = ["A. The answer is (2 + 2).", "B. The answer is (5).", "C. The answer is (3 + 1).", "no answer"]
    result = voting.vote("svamp", texts)
    assert result.teacher_label == "(2 + 2)"  # (2 + 2) and (3 + 1) agree by value
    assert result.rationales == ("A.", "C.")
    filtered = voting.vote("svamp", texts, gold="( 5.0 )", gold_filter=True)
    assert filtered.teacher_label == "(2 + 2)" and filtered.rationales == ("B.",)
    none_match = voting.vote("svamp", texts, gold="( 7.0 )", gold_filter=True)
    assert not none_match.parse_ok and "gold" in none_match.error
