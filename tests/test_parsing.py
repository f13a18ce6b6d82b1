"""Teacher-completion parsing: real PaLM completions (svamp, cqa) and NLI fixtures."""
import json

import pytest

from distill.data.parsing import ParsedCompletion, cut_run_on, normalize_label, parse_completion
from distill.errors import UserError


def _completions(root, dataset, split):
    outputs, i = [], 0
    while (root / dataset / "llm" / f"{split}_CoT_{i}.json").exists():
        outputs += json.loads((root / dataset / "llm" / f"{split}_CoT_{i}.json").read_text())
        i += 1
    return outputs


@pytest.fixture(scope="module")
def real(shared_data_dir):
    return {(ds, split): _completions(shared_data_dir, ds, split)
            for ds in ("svamp", "cqa") for split in ("train", "test")}


def test_svamp_run_on_is_cut_and_equation_kept(real):
    parsed = parse_completion("svamp", real["svamp", "train"][0])
    assert parsed == ParsedCompletion(
        "Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. 84 / 2 = 42.",
        "(84 / 2)", True, None)
    assert "There are 120 students" in real["svamp", "train"][0]  # the run-on was there


def test_svamp_truncated_run_on_marker_and_nested_equation(real):
    # train 747 ends "... The answer is ((15 * 19) + (62 * 19)).\n\nQ" (cut mid-marker).
    parsed = parse_completion("svamp", real["svamp", "train"][747])
    assert parsed.ok and parsed.label == "((15 * 19) + (62 * 19))"
    assert parsed.rationale.endswith("285 + 1178 is 1463.")


def test_svamp_answerless_and_truncated_are_failures(real):
    answerless = parse_completion("svamp", real["svamp", "train"][796])  # runs on with no answer
    assert (answerless.ok, answerless.label, answerless.rationale) == (False, None, None)
    assert "no answer phrase" in answerless.error
    truncated = parse_completion("svamp", real["svamp", "train"][174])  # "The answer is ((491 - 21"
    assert not truncated.ok and truncated.label is None
    assert "'((491 - 21'" in truncated.error and truncated.rationale.startswith("Lewis earns 491")
    unknown = parse_completion("svamp", real["svamp", "train"][54])  # "The answer is (2 * x)."
    assert not unknown.ok and "'(2 * x)'" in unknown.error


def test_svamp_echoed_question_is_dropped(real):
    # train 787 repeats the question, then "\nA: There were originally 7 roses. ... The answer is (20 - 7)."
    parsed = parse_completion("svamp", real["svamp", "train"][787])
    assert parsed.ok and parsed.label == "(20 - 7)"
    assert parsed.rationale == "There were originally 7 roses. Jessica cut some more. Now there are 20. So she cut 20 - 7 = 13 roses."
    echo_only = parse_completion("svamp", real["svamp", "train"][80])  # echo, then truncated: no answer
    assert not echo_only.ok and "no answer phrase" in echo_only.error


def test_cqa_choice_text_with_run_on(real):
    parsed = parse_completion("cqa", real["cqa", "train"][0])
    assert parsed.ok and parsed.label == "math problem"
    assert parsed.rationale.endswith("only math problem has to do with the above problem.")
    assert "exaggeration" not in parsed.rationale  # from the run-on exemplar
    assert parse_completion("cqa", real["cqa", "train"][4175]).label == "good luck"  # "(b) good luck!"


def test_cqa_ambiguous_and_letterless_answers_are_failures(real):
    either = parse_completion("cqa", real["cqa", "train"][16])  # "either (a) aquarium or (e) pond."
    assert not either.ok and either.label is None and "more than one answer choice" in either.error
    assert either.rationale.startswith("The answer must be a place where goldfish live.")
    vague = parse_completion("cqa", real["cqa", "train"][3362])  # "So the answer is one of these four."
    assert not vague.ok and "no answer choice letter" in vague.error


@pytest.mark.parametrize("dataset,split,failures", [
    ("svamp", "train", 34), ("svamp", "test", 7), ("cqa", "train", 287), ("cqa", "test", 25)])
def test_every_real_completion_parses_or_fails_explicitly(real, dataset, split, failures):
    results = [parse_completion(dataset, text) for text in real[dataset, split]]
    bad = [r for r in results if not r.ok]
    assert len(bad) == failures
    assert all(r.error and r.label is None for r in bad)  # no failure with a half label
    for r in results:
        if r.ok:
            assert r.rationale and r.label and r.error is None
            assert "\nQ:" not in r.rationale and "\n\n" not in r.rationale and "\nA:" not in r.rationale


def test_anli1_so_the_answer_style():
    text = "The premise says he left. So the answer is Contradiction.\n\nPremise: x\nHypothesis: y\nSo the answer is neutral."
    assert parse_completion("anli1", text) == ParsedCompletion(
        "The premise says he left.", "contradiction", True, None)
    assert parse_completion("anli1", "Same event. So the answer is: entailment").label == "entailment"
    off_space = parse_completion("anli1", "It is unclear. So the answer is maybe.")
    assert not off_space.ok and "'maybe' is not one of entailment, neutral, contradiction" in off_space.error


def test_esnli_answer_line_style():
    text = "A guitar player makes music.\nAnswer: entailment\n\nPremise: Two dogs run.\nHypothesis: Animals move.\nAnswer: entailment"
    assert parse_completion("esnli", text) == ParsedCompletion("A guitar player makes music.", "entailment", True, None)
    no_answer = parse_completion("esnli", "A guitar player makes music.\n\nPremise: x\nAnswer: neutral")
    assert not no_answer.ok and no_answer.label is None  # the answer belongs to the run-on exemplar
    assert not parse_completion("esnli", "Answer: neutral").ok  # a label but no rationale
    assert parse_completion("esnli", "Answer: neutral").label == "neutral"


@pytest.mark.parametrize("text", [None, "", "   ", "\n\nQ: next", 42, "So the answer is", "The answer is ()." * 1000,
                                  "So the answer is (" * 5000, "\x00\udcff", "So the answer is (z)."])
def test_hostile_text_never_raises(text):
    for dataset in ("svamp", "cqa", "anli1", "esnli", "jsonl"):
        parsed = parse_completion(dataset, text)
        assert isinstance(parsed, ParsedCompletion)
        if dataset != "jsonl":
            assert not parsed.ok and parsed.error


def test_generic_jsonl_style_accepts_either_phrase():
    assert parse_completion("jsonl", "Because. So the answer is Paris.").label == "paris"
    assert parse_completion("jsonl", "Because.\nAnswer: Paris").rationale == "Because."


def test_cut_run_on_and_normalize_label():
    assert cut_run_on("a. So the answer is (a) x.\nQ: next") == "a. So the answer is (a) x."
    assert cut_run_on("a\nb\n\nPremise: c") == "a\nb"
    assert cut_run_on("\n\n  a. So the answer is (b) c.\n\nQ: d") == "a. So the answer is (b) c."
    assert normalize_label("cqa", "  Wooded   Area. ") == "wooded area"
    assert normalize_label("anli1", "Neutral") == "neutral"
    assert normalize_label("svamp", "( 84.0  /  2.0 )") == "( 84.0 / 2.0 )"
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        normalize_label("nope", "x")
