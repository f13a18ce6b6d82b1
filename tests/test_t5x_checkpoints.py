"""distill/models/t5x_checkpoints.py: T5X (orbax) checkpoints -> our T5 -> Hugging Face, checked by logits.

The parity tests need T5X (DISTILL_T5X_SRC, tests/t5x_helpers.py) for its
own network; the path and config checks run without it. The checkpoints
are written the way t5x.train lays them out (MODEL_DIR/config.gin,
MODEL_DIR/checkpoint_<N>/state with {"target": params, "state": ...});
tests/test_t5x_train.py converts a real t5x.train run.
"""
import json

import numpy as np
import pytest

import t5x_helpers
from distill.errors import UserError
from distill.models import t5x_checkpoints


def _write_checkpoint(model_dir, params, gin_lines, step=0):
    import orbax.checkpoint as ocp

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.gin").write_text("\n".join(gin_lines) + "\n")
    ocp.PyTreeCheckpointer().save(model_dir / f"checkpoint_{step}" / "state",
                                  {"target": params, "state": {"step": np.int32(step)}})


@pytest.mark.parametrize("activations, tied", [(("gelu", "linear"), False), (("relu",), True)])
def test_converted_checkpoint_matches_t5x_and_hugging_face(tmp_path, monkeypatch, activations, tied):
    """T5 v1.1 / Flan (gated-gelu, own logits layer) and original T5 (relu, logits from the embedding)."""
    t5x_helpers.require_t5x()
    import jax

    from distill.models.export import export
    from distill.run_dir import load_trained
    from distill.vocab import train_vocabulary

    network = t5x_helpers.tiny_network(mlp_activations=activations, logits_via_embedding=tied)
    encoder, decoder, target = t5x_helpers.token_rows()
    params = jax.device_get(network.init(jax.random.PRNGKey(2), encoder, decoder, target)["params"])
    vocab = train_vocabulary([f"word{i} number {i}" for i in range(40)], size=40, out_path=str(tmp_path / "spm.model"))
    model_dir = tmp_path / "run"
    _write_checkpoint(model_dir, params, [
        "from __gin__ import dynamic_registration",
        "ACTIVATIONS = %s" % (activations,),
        "network.T5Config.mlp_activations = %ACTIVATIONS",
        f"network.T5Config.logits_via_embedding = {tied}",
        f"seqio.SentencePieceVocabulary.sentencepiece_model_file = '{vocab}'",
    ], step=7)
    assert t5x_checkpoints.is_t5x_checkpoint(str(model_dir))
    assert t5x_checkpoints.is_t5x_checkpoint(str(model_dir / "checkpoint_7"))

    trained = load_trained(str(model_dir / "checkpoint_7"))
    config = trained.config
    assert (config.feed_forward_proj, config.tie_word_embeddings) == (
        "gated-gelu" if len(activations) == 2 else "relu", tied)
    assert (config.vocab_size, config.d_model, config.d_kv, config.num_heads, config.d_ff) == (64, 8, 4, 2, 16)
    assert (trained.model_dir, trained.step, trained.tokenizer_path) == (str(model_dir), 7, vocab)

    want = t5x_helpers.t5x_logits(network, params, encoder, decoder, target)
    ours = t5x_helpers.flax_logits(config, trained.params, encoder, decoder)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("DISTILL_LABEL_PREFIX", "predict: ")  # as the T5X run registered its tasks
    out = export(str(model_dir), str(tmp_path / "hf"))
    assert (out / "spiece.model").is_file()
    assert json.loads((out / "config.json").read_text())["task_specific_params"] == {
        "label": {"prefix": "predict: "}, "rationale": {"prefix": "[rationale] "}}
    np.testing.assert_allclose(t5x_helpers.hf_logits(out, encoder, decoder), ours, rtol=1e-4, atol=1e-4)


def test_paths_that_are_not_t5x_checkpoints(tmp_path):
    assert not t5x_checkpoints.is_t5x_checkpoint(str(tmp_path))
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)  # distill's own layout is not T5X's
    (tmp_path / "checkpoint_3.orbax-checkpoint-tmp-1").mkdir()  # an unfinished T5X save
    assert not t5x_checkpoints.is_t5x_checkpoint(str(tmp_path))
    with pytest.raises(UserError, match="is not a T5X checkpoint"):
        t5x_checkpoints.load_t5x_checkpoint(str(tmp_path))
    legacy = tmp_path / "old" / "checkpoint_5"
    legacy.mkdir(parents=True)
    (legacy / "checkpoint").write_bytes(b"\x80")  # pre-orbax msgpack layout
    assert t5x_checkpoints.is_t5x_checkpoint(str(tmp_path / "old"))
    with pytest.raises(UserError, match="pre-orbax"):
        t5x_checkpoints.load_t5x_checkpoint(str(tmp_path / "old"))


def _fake_params(gated: bool, tied: bool) -> dict:
    """Shapes of a converted 1-layer network (no T5X needed)."""
    z = np.zeros
    mlp = {"wi_0": z((8, 16)), "wi_1": z((8, 16)), "wo": z((16, 8))} if gated else {"wi": z((8, 16)), "wo": z((16, 8))}
    attention = {name: z((8, 12)) for name in ("query", "key", "value")} | {"out": z((12, 8))}
    params = {"token_embedder": {"embedding": z((64, 8))},
              "encoder": {"relpos_bias": {"rel_embedding": z((4, 32))},
                          "layers_0": {"attention": attention, "mlp": mlp}},
              "decoder": {"layers_0": {}}}
    if not tied:
        params["decoder"]["logits_dense"] = z((8, 64))
    return params


def test_config_from_shapes_and_gin(tmp_path):
    config = t5x_checkpoints.config_from_t5x(_fake_params(gated=True, tied=False), {}, "ckpt")
    assert (config.feed_forward_proj, config.d_kv, config.num_heads, config.num_encoder_layers) == (
        "gated-gelu", 3, 4, 1)  # no config.gin: the public v1.1 / Flan choice
    gin = {"network.T5Config.mlp_activations": ("silu", "linear")}
    assert t5x_checkpoints.config_from_t5x(_fake_params(True, False), gin, "c").feed_forward_proj == "gated-silu"
    with pytest.raises(UserError, match=r"network\.T5Config\.mlp_activations = \('gelu',\)"):
        t5x_checkpoints.config_from_t5x(_fake_params(gated=False, tied=True),
                                        {"network.T5Config.mlp_activations": ("gelu",)}, "ckpt")
    with pytest.raises(UserError, match="logits_via_embedding"):
        t5x_checkpoints.config_from_t5x(_fake_params(gated=False, tied=True),
                                        {"network.T5Config.logits_via_embedding": False}, "ckpt")
    (tmp_path / "config.gin").write_text("RATE = 0.25\nnetwork.T5Config.dropout_rate = %RATE\n"
                                         "network.Transformer.config = @network.T5Config()\n")
    assert t5x_checkpoints.read_gin_bindings(str(tmp_path)) == {"RATE": 0.25, "network.T5Config.dropout_rate": 0.25}
