"""HF checkpoint import (safetensors, sharded, pytorch_model.bin, bf16, sharded placement) and export."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distill.errors import UserError
from distill.models.hf_checkpoints import config_from_hf, load_hf_checkpoint, save_hf_checkpoint
from model_helpers import VARIANTS, hf_t5_config, hf_t5_model, padded_batch, save_hf_t5


def _tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """variant -> (directory saved with safetensors, torch model)."""
    out = {}
    for variant in sorted(VARIANTS):
        directory = tmp_path_factory.mktemp(f"hf_{variant}")
        out[variant] = directory, save_hf_t5(directory, variant, seed=7)
    return out


def _torch_logits(model, batch):
    import torch

    inputs = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=inputs, attention_mask=(inputs != 0).long(),
                     decoder_input_ids=torch.tensor(batch["decoder_input_tokens"], dtype=torch.long)).logits.numpy()


def test_config_from_hf_reads_both_architectures():
    original = config_from_hf(hf_t5_config("t5").to_dict())
    v11 = config_from_hf(hf_t5_config("t5_1_1").to_dict())
    assert (original.feed_forward_proj, original.tie_word_embeddings) == ("relu", True)
    assert (v11.feed_forward_proj, v11.tie_word_embeddings) == ("gated-gelu", False)
    assert (v11.num_encoder_layers, v11.num_decoder_layers, v11.relative_attention_num_buckets) == (3, 2, 8)
    # A transformers 4 style v1.1 config.json (no scale_decoder_outputs), max distance absent -> 128.
    old_style = {"model_type": "t5", "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
                 "num_layers": 8, "d_model": 512, "eos_token_id": [1]}
    parsed = config_from_hf(old_style)
    assert (parsed.tie_word_embeddings, parsed.num_decoder_layers, parsed.relative_attention_max_distance,
            parsed.eos_token_id) == (False, 8, 128, 1)
    assert config_from_hf({"model_type": "mt5", "feed_forward_proj": "gated-gelu"}).feed_forward_proj == "gated-gelu"


@pytest.mark.parametrize("field,value", [("feed_forward_proj", "gated-swish"), ("is_decoder", True),
                                         ("model_type", "umt5"), ("is_encoder_decoder", False)])
def test_config_from_hf_names_the_field_it_cannot_represent(field, value):
    hf = {"model_type": "t5", "feed_forward_proj": "relu", field: value}
    with pytest.raises(UserError, match=field):
        config_from_hf(hf)


def test_sharded_and_pytorch_checkpoints_import_to_the_same_params(hf_dirs, tmp_path):
    import torch

    directory, model = hf_dirs["t5_1_1"]
    config, params = load_hf_checkpoint(directory)
    sharded = tmp_path / "sharded"
    model.save_pretrained(str(sharded), max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    torch_dir = tmp_path / "torch"  # transformers 5 saves safetensors only: write the legacy file directly.
    torch_dir.mkdir()
    (torch_dir / "config.json").write_bytes((directory / "config.json").read_bytes())
    torch.save(model.state_dict(), torch_dir / "pytorch_model.bin")
    for other in (sharded, torch_dir):
        other_config, other_params = load_hf_checkpoint(other)
        assert other_config == config
        _tree_equal(params, other_params)
    # The separate lm_head is the model's, not the embedding.
    np.testing.assert_array_equal(params["decoder"]["logits_dense"], model.lm_head.weight.detach().numpy().T)
    assert not np.allclose(params["decoder"]["logits_dense"], params["token_embedder"]["embedding"].T)


def test_bfloat16_checkpoint_and_param_dtype(hf_dirs, tmp_path):
    import torch

    directory, _ = hf_dirs["t5"]
    bf16_dir = tmp_path / "bf16"
    model = hf_t5_model("t5", seed=7).to(torch.bfloat16)  # A copy: the fixture's model stays float32.
    model.save_pretrained(str(bf16_dir))
    config, params = load_hf_checkpoint(bf16_dir)
    assert config.param_dtype == "float32"
    expected = model.shared.weight.detach().to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(params["token_embedder"]["embedding"], expected)
    config, params = load_hf_checkpoint(directory, param_dtype="bfloat16")
    assert config.param_dtype == "bfloat16"
    assert {np.dtype(x.dtype).name for x in jax.tree.leaves(params)} == {"bfloat16"}


def test_shardings_place_each_tensor(hf_dirs):
    directory, _ = hf_dirs["t5"]
    _, plain = load_hf_checkpoint(directory)
    mesh = Mesh(np.array(jax.devices()[:1]), ("model",))
    shardings = jax.tree.map(
        lambda x: NamedSharding(mesh, PartitionSpec("model") if x.ndim == 2 else PartitionSpec()), plain)
    _, placed = load_hf_checkpoint(directory, shardings=shardings)
    for array, sharding in zip(jax.tree.leaves(placed), jax.tree.leaves(shardings)):
        assert isinstance(array, jax.Array) and array.sharding == sharding
    _tree_equal(plain, placed)


def test_weights_that_do_not_match_config_json_are_refused(hf_dirs, tmp_path):
    directory, _ = hf_dirs["t5"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    hf = json.loads((directory / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(dict(hf, num_decoder_layers=hf["num_decoder_layers"] + 1)))
    with pytest.raises(UserError, match=r"decoder\.block\.3.*missing"):
        load_hf_checkpoint(broken)
    (broken / "config.json").write_text(json.dumps(dict(hf, d_ff=hf["d_ff"] * 2)))
    with pytest.raises(UserError, match="shape"):
        load_hf_checkpoint(broken)
    with pytest.raises(UserError, match="config.json"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(UserError, match="model.safetensors"):
        load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_round_trips_through_transformers(variant, hf_dirs, tmp_path):
    import transformers
    from safetensors import safe_open

    directory, model = hf_dirs[variant]
    config, params = load_hf_checkpoint(directory)
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "spiece.model").write_bytes(b"not a real model, copied verbatim")
    (tokenizer_dir / "special_tokens_map.json").write_text("{}")
    out = tmp_path / "export"
    save_hf_checkpoint(config, {"params": params}, out, tokenizer_dir=tokenizer_dir)
    assert (out / "spiece.model").read_bytes() == b"not a real model, copied verbatim"
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "T5Tokenizer"
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["T5ForConditionalGeneration"] and written["model_type"] == "t5"
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        names = set(f.keys())
    assert {"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"} <= names
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # No staging leftovers.

    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(out)).eval()
    batch = padded_batch(seed=11)
    np.testing.assert_allclose(_torch_logits(reloaded, batch), _torch_logits(model, batch), atol=1e-5)
    again_config, again = load_hf_checkpoint(out)
    assert again_config == config
    _tree_equal(params, again)


def test_failed_export_leaves_the_previous_directory_intact(hf_dirs, tmp_path):
    directory, _ = hf_dirs["t5"]
    config, params = load_hf_checkpoint(directory)
    out = tmp_path / "export"
    save_hf_checkpoint(config, params, out)
    before = (out / "model.safetensors").read_bytes()
    broken = jax.tree.map(lambda x: x, params)
    broken["encoder"]["encoder_norm"]["scale"] = np.zeros(config.d_model, np.int64)  # Not exportable.
    with pytest.raises(UserError, match="dtype"):
        save_hf_checkpoint(config, broken, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_corrupt_safetensors_file_is_one_user_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5", "vocab_size": 64, "d_model": 8, "d_kv": 4, '
                                          '"d_ff": 16, "num_heads": 2, "num_layers": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
        load_hf_checkpoint(tmp_path)
