"""Metrics and the safe arithmetic evaluator, including hostile strings."""
import pytest

from distill.data.equations import MAX_CHARS, MAX_DEPTH
from distill.errors import UserError
from distill.metrics import accuracy, equation_accuracy, metric_fn_for, safe_eval


@pytest.mark.parametrize("expr,value", [
    ("( 84.0 / 2.0 )", 42.0), ("( ( 17.0 + 15.0 ) + 2.0 )", 34.0), ("(7 * 36) / 3", 84.0),
    ("2 + 3 * 4", 14.0), ("(2 + 3) * 4", 20.0), ("10 - 4 - 3", 3.0), ("8 / 4 / 2", 1.0),
    ("-3 + 5", 2.0), ("(45 - (-12))", 57.0), ("--3", 3.0), ("+2", 2.0), (".5 * 4", 2.0), ("5.", 5.0),
    (" 7 ", 7.0), ("1.5", 1.5),
])
def test_safe_eval_arithmetic(expr, value):
    assert safe_eval(expr) == pytest.approx(value)


@pytest.mark.parametrize("expr", [
    "__import__('os')", "__import__('os').system('true')", "1e999999", "1e5", "2**3", "10**10**10", "2 ^ 3",
    "", "   ", "()", "1/0", "(5 - 5) / (3 - 3)", "1 / (2 - 2)", "(1 + 2", "1 + 2)", "1 +", "* 2", "3 4",
    "322,775", "(175, 5)", "x + 1", "(some - 8)", "7x = 14", "(2 * x)", "inf", "nan", "1_000", "0x10",
    "lambda: 1", "abs(-1)", "1 % 2", "1 // 2", "[1]", "١٢",  # non-ASCII digits are not digits here
    "(" * 10000 + "1" + ")" * 10000, "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
    "-" * 5000 + "1", "1+" * 600 + "1", "9" * 41, "9" * 39 + "*" + "9" * 39 + ("*" + "9" * 39) * 10,
    "1" * (MAX_CHARS + 1),
])
def test_safe_eval_rejects_hostile_and_malformed(expr):
    assert safe_eval(expr) is None


def test_safe_eval_accepts_nesting_up_to_the_limit_and_rejects_non_strings():
    depth = MAX_DEPTH - 1
    assert safe_eval("(" * depth + "2" + ")" * depth) == 2.0
    assert safe_eval(None) is None and safe_eval(12) is None


def test_equation_accuracy_by_value():
    targets = ["( 84.0 / 2.0 )", "( 10.0 * 45.0 )", "( 1.0 / 3.0 )", "( 5.0 - 2.0 )", "( 4.0 / 2.0 )", "( 2.0 + 2.0 )"]
    predictions = ["(84 / 2)", "450", "(10 / 30)", "(2 - 5)", "2**1", "(4 / 0)"]
    assert equation_accuracy(targets, predictions) == {"accuracy": pytest.approx(3 / 6)}
    assert equation_accuracy(["( 0.1 + 0.2 )"], ["0.3"])["accuracy"] == 1.0  # float rounding tolerated
    assert equation_accuracy(["( 12345.0 + 0.0 )"], ["12345.01"])["accuracy"] == 0.0  # a real difference is not
    assert equation_accuracy(["1/0"], ["1/0"])["accuracy"] == 0.0  # two invalid values never agree
    assert equation_accuracy([], []) == {"accuracy": 0.0}


def test_accuracy_normalizes_labels():
    targets = ["wooded area", "neutral", "Paris", "bridge"]
    predictions = ["Wooded  area.", "neutral", "paris", "train station"]
    assert accuracy(targets, predictions) == {"accuracy": 0.75}
    assert accuracy([], []) == {"accuracy": 0.0}
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        accuracy(["a", "b"], ["a"])


def test_metric_fn_for_each_dataset():
    assert metric_fn_for("svamp") is equation_accuracy
    for name in ("cqa", "anli1", "esnli", "jsonl"):
        assert metric_fn_for(name) is accuracy
    with pytest.raises(UserError, match="known datasets: svamp, cqa, esnli, anli1, jsonl"):
        metric_fn_for("gsm8k")
