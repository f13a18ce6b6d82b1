"""`distill report`: the Markdown table and PNG plots hold every run of a results.csv."""
import itertools

import pytest

from distill import report
from distill.errors import UserError
from e2e_helpers import markdown_rows, png_series, write_results_csv

METHODS = ("standard_gt", "step_by_step_gt")


def _rows(tmp_path):
    """2 models x 2 methods x 2 fractions x 2 seeds on svamp, accuracy = a known function of the point."""
    rows = []
    for model, method, fraction, seed in itertools.product(("tiny", "small"), METHODS, (0.5, 1.0), (0, 1)):
        accuracy = 0.1 * fraction + (0.05 if method == "step_by_step_gt" else 0.0) + 0.02 * seed
        rows.append({
            "dataset": "svamp", "method": method, "model": model, "train_fraction": fraction, "seed": seed,
            "accuracy": accuracy + (0.1 if model == "small" else 0.0), "steps": 10, "train_seconds": 1.5,
            "tokens_per_second": 1000.0, "model_dir": str(tmp_path / f"{model}-{method}-{fraction}-{seed}"),
        })
    return rows


def test_table_has_mean_and_std_over_seeds_for_every_point(tmp_path):
    csv_path = write_results_csv(tmp_path / "results.csv", _rows(tmp_path))
    out = tmp_path / "report"
    assert report.main([str(csv_path), "--out", str(out)]) == 0
    rows = markdown_rows((out / "results.md").read_text(), "svamp")
    header, body = rows[0], rows[1:]
    assert header == ["model", "train fraction", "Standard fine-tuning", "Step-by-step (gold labels)"]
    # Rows ordered by model size, then fraction.
    assert [(r[0], r[1]) for r in body] == [("tiny", "50%"), ("tiny", "100%"), ("small", "50%"), ("small", "100%")]
    # tiny, 50%, step-by-step: seeds 0.1*0.5+0.05+{0, 0.02} -> mean 11.0%, std 1.4 (ddof=1).
    assert body[0][3] == "11.0 ± 1.4 (n=2)"
    assert body[3][2] == "21.0 ± 1.4 (n=2)"


def test_plots_have_one_series_per_method_per_model(tmp_path):
    csv_path = write_results_csv(tmp_path / "results.csv", _rows(tmp_path))
    paths = report.write_report(str(csv_path), str(tmp_path / "out"))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["fraction_svamp.png", "model_size_svamp.png", "results.md"]
    fraction = png_series(tmp_path / "out" / "fraction_svamp.png")
    expected = ["Standard fine-tuning", "Step-by-step (gold labels)"]
    assert fraction == {"svamp, T5 tiny": expected, "svamp, T5 small": expected}
    sizes = png_series(tmp_path / "out" / "model_size_svamp.png")
    assert sizes == {"svamp, 100% of training data": expected}


def test_single_seed_has_no_std(tmp_path):
    rows = [r for r in _rows(tmp_path) if r["seed"] == 0]
    out = tmp_path / "out"
    report.write_report(str(write_results_csv(tmp_path / "r.csv", rows)), str(out))
    body = markdown_rows((out / "results.md").read_text(), "svamp")[1:]
    assert body[0][2] == "5.0 (n=1)"


def test_teacher_accuracy_is_a_reference_line(tmp_path, shared_data_dir):
    expected = report.teacher_accuracy("svamp", str(shared_data_dir))
    assert 0.3 < expected < 1.0  # PaLM's few-shot CoT on SVAMP is far above chance, below perfect.
    csv_path = write_results_csv(tmp_path / "results.csv", _rows(tmp_path))
    out = tmp_path / "out"
    report.write_report(str(csv_path), str(out), data_dir=str(shared_data_dir))
    assert f"Teacher (few-shot CoT, cached outputs): {100 * expected:.1f}" in (out / "results.md").read_text()
    for series in png_series(out / "fraction_svamp.png").values():
        assert series[-1] == "Teacher (few-shot CoT)" and len(series) == 3


@pytest.mark.parametrize("content, message", [
    ("dataset,method\nsvamp,standard_gt\n", "missing columns"),
    (",".join(report.RESULT_COLUMNS) + "\nsvamp,standard_gt,tiny,half,0,0.1,10,1,1,d\n", "r.csv:2: bad value"),
])
def test_bad_results_file_is_a_one_line_user_error(tmp_path, content, message):
    path = tmp_path / "r.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        report.write_report(str(path), str(tmp_path / "out"))


def test_missing_results_file_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="run `distill sweep` first"):
        report.read_results(str(tmp_path / "nope.csv"))


def _rows_with_correctness(tmp_path, gap: float):
    """Two methods x 3 seeds on 200 shared test examples; step-by-step is right on `gap` more of them."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    easy = rng.random(200)
    rows = []
    for method, seed in itertools.product(METHODS, range(3)):
        threshold = 0.4 + (gap if method == "step_by_step_gt" else 0.0)
        noise = np.random.default_rng(seed).random(200) * 0.1
        correct = (easy + noise) < threshold
        path = tmp_path / f"{method}-{seed}.jsonl"
        path.write_text("".join(json.dumps({"prediction": "x", "correct": bool(c)}) + "\n" for c in correct))
        rows.append({"dataset": "svamp", "method": method, "model": "tiny", "train_fraction": 1.0, "seed": seed,
                     "accuracy": float(correct.mean()), "steps": 10, "train_seconds": 1, "tokens_per_second": 1,
                     "model_dir": str(tmp_path), "selected_step": 10, "final_accuracy": float(correct.mean()),
                     "baseline_accuracy": 0.01, "correctness_file": str(path)})
    return rows


@pytest.mark.parametrize("gap, significant", [(0.2, True), (0.0, False)])
def test_intervals_and_paired_differences_in_table_and_plots(tmp_path, gap, significant):
    csv_path = write_results_csv(tmp_path / "results.csv", _rows_with_correctness(tmp_path, gap))
    out = tmp_path / "out"
    report.write_report(str(csv_path), str(out))
    text = (out / "results.md").read_text()
    body = markdown_rows(text, "svamp")[1:]
    assert len(body) == 1 and all("[" in cell and "(n=3)" in cell for cell in body[0][2:])
    pairs = markdown_rows(text, "Paired differences")[1:]
    assert len(pairs) == 1 and pairs[0][3] == "Step-by-step (gold labels) - Standard fine-tuning"
    assert pairs[0][4].endswith(" *") == significant and pairs[0][7] == "3"
    assert (float(pairs[0][6]) < 0.01) == significant
    assert report.write_report(str(csv_path), str(tmp_path / "again")) and \
        (tmp_path / "again" / "results.md").read_text() == text  # fixed seeds: bit for bit
    series = png_series(out / "fraction_svamp.png")["svamp, T5 tiny"]
    assert "Step-by-step (gold labels), 95% interval" in series
    assert "Standard fine-tuning, before training" in series
