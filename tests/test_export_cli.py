"""`distill export`: HF directory round trip, training checkpoints, refusing to overwrite."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from distill import cli
from distill.models.hf_checkpoints import load_hf_checkpoint
from distill.models.export import main
from model_helpers import save_hf_t5


def _tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    save_hf_t5(directory, "t5_1_1", seed=3)
    (directory / "spiece.model").write_bytes(b"sentencepiece bytes")
    return directory


def test_export_of_an_hf_directory_round_trips(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["export", "--checkpoint", str(hf_dir), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    config, params = load_hf_checkpoint(hf_dir)
    again_config, again = load_hf_checkpoint(out)
    assert again_config == config
    _tree_equal(params, again)
    assert (out / "spiece.model").read_bytes() == b"sentencepiece bytes"

    assert main(["--checkpoint", str(hf_dir), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    half_config, half = load_hf_checkpoint(tmp_path / "bf16", param_dtype="bfloat16")
    np.testing.assert_array_equal(half["decoder"]["logits_dense"],
                                  params["decoder"]["logits_dense"].astype(half_config.weight_dtype))


def test_export_refuses_a_non_empty_out_without_overwrite(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert cli.main(["export", "--checkpoint", str(hf_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert main(["--checkpoint", str(hf_dir), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert main(["--checkpoint", str(hf_dir), "--out", str(hf_dir), "--overwrite"]) == 2
    assert "holds the checkpoint" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "run.json" in capsys.readouterr().err


def test_export_of_a_training_checkpoint(hf_dir, tmp_path):
    """A run's latest step (and one named step) exports to the params the run saved."""
    from distill.checkpointing import CheckpointManager
    from distill.optimizers import make_optimizer
    from distill.partitioning import Partitioner
    from distill.trainer import Trainer

    config, params = load_hf_checkpoint(hf_dir)
    model_dir = tmp_path / "run"
    (model_dir / "vocab").mkdir(parents=True)
    (model_dir / "vocab" / "spm.model").write_bytes(b"trained vocabulary")
    (model_dir / "run.json").write_text(json.dumps({"model_config": dataclasses.asdict(config)}))
    trainer = Trainer(config=config, optimizer=make_optimizer("adamw", learning_rate=1e-3),
                      partitioner=Partitioner())
    state = trainer.init_from_params(params)
    with CheckpointManager(str(model_dir), save_every=1, async_save=False) as manager:
        manager.save(5, state, {"position": 0}, force=True)
        moved = state.replace(params=jax.tree.map(lambda x: x + 1, state.params))
        manager.save(9, moved, {"position": 1}, force=True)

    latest, step5 = tmp_path / "latest", tmp_path / "step5"
    assert main(["--checkpoint", str(model_dir), "--out", str(latest)]) == 0
    assert main(["--checkpoint", str(model_dir / "checkpoints" / "5"), "--out", str(step5)]) == 0
    _, exported = load_hf_checkpoint(step5)
    _tree_equal(params, exported)
    _, exported_latest = load_hf_checkpoint(latest)
    _tree_equal(jax.tree.map(lambda x: np.asarray(x) + 1, params), exported_latest)
    assert (latest / "spiece.model").read_bytes() == b"trained vocabulary"
    assert json.loads((latest / "tokenizer_config.json").read_text())["extra_ids"] == 0


def test_replace_dir_never_leaves_the_target_missing(tmp_path):
    """The swap of a finished folder for an existing one is one step: no moment without the target."""
    from distill.atomic import replace_dir

    target, staging = tmp_path / "out", tmp_path / ".out.partial"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    replace_dir(str(staging), str(target))
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
