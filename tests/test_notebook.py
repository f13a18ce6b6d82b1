"""scripts/colab_tpu_demo.ipynb executes end to end on CPU (nbclient, the venv's python3 kernel).

The notebook's own env knobs make it small: a tiny random Hugging Face T5 and a
SentencePiece vocabulary created by its data cell, a few training steps.
"""
import json

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_notebook_runs_and_shows_predictions_and_a_plot(repo_root, shared_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("DEMO_CREATE_TINY_MODEL", "1")
    monkeypatch.setenv("DEMO_STEPS", "6")
    monkeypatch.setenv("DEMO_BATCH_SIZE", "4")
    monkeypatch.setenv("DEMO_EVAL_EXAMPLES", "10")
    monkeypatch.setenv("DEMO_WORK_DIR", str(tmp_path))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(repo_root / "scripts" / "colab_tpu_demo.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # Raises CellExecutionError, with the cell's traceback, on any failing cell.

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "backend: cpu" in text
    metrics = json.loads((tmp_path / "svamp_step_by_step" / "metrics.json").read_text())
    assert metrics["latest_step"] == 6
    assert f"step 6: test accuracy {metrics['test_accuracy']:.3f}" in text
    assert text.count("✓") + text.count("✗") == 10  # Ten predictions shown next to their gold labels.
    images = [out for out in outputs if out.output_type == "display_data" and "image/png" in out.data]
    assert len(images) == 1
