"""The local Flax T5 backend on a tiny random T5 checkpoint and a SentencePiece model made here.

One short exemplar keeps prompts near 100 tokens, so every batch falls in the
same padded shape and the decoder compiles once.
"""
import json

import pytest
from teacher_helpers import SVAMP_TEST, make_data_dir, read_jsonl

spm = pytest.importorskip("sentencepiece")

import flax.linen  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.models.hf_checkpoints import save_hf_checkpoint  # noqa: E402
from distill.models.t5 import T5Config, abstract_params  # noqa: E402
from distill.teacher import prompts  # noqa: E402
from distill.teacher.backends.base import SamplingParams  # noqa: E402
from distill.teacher.backends.flax_t5 import FlaxT5Backend  # noqa: E402
from distill.teacher.pipeline import run_teacher  # noqa: E402

VOCAB_SIZE = 64
EXEMPLARS = {"instruction": "", "exemplars": [{"input": "Ann has 1 apple.", "rationale": "One apple.", "label": "(1)"}]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("flax_t5")
    # A random Flan-T5-shaped model written by the project's own exporter (no torch needed).
    config = T5Config(vocab_size=VOCAB_SIZE, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=2,
                      num_decoder_layers=2, dropout_rate=0.0)
    # Random weights from the abstract shapes: no jit-compiled init needed.
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda leaf: rng.normal(0.0, 0.3, leaf.shape).astype(np.float32),
                                    flax.linen.unbox(abstract_params(config)))
    save_hf_checkpoint(config, params, root)
    (root / "exemplars.json").write_text(json.dumps(EXEMPLARS))
    shipped = prompts.render_completion(prompts.load_exemplars("svamp"), SVAMP_TEST[0]["input"])
    texts = [r["input"] for r in SVAMP_TEST] + shipped.split("\n") + ["Q: A: One apple. The answer is (1)."]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts * 5), model_prefix=str(root / "spiece"),
                                   vocab_size=VOCAB_SIZE, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)  # exactly the model's vocabulary: every id decodes
    return root


def test_flax_t5_backend_runs_the_pipeline_and_resumes(checkpoint, tmp_path):
    data = make_data_dir(tmp_path / "data")
    backend = FlaxT5Backend(str(checkpoint), batch_size=2, max_input_length=256)
    kwargs = dict(dataset="svamp", split="test", data_dir=str(data), out=str(tmp_path / "out"), limit=4,
                  exemplars_path=str(checkpoint / "exemplars.json"), params=SamplingParams(max_tokens=4),
                  progress_stream=open(tmp_path / "progress", "w"))
    summary = run_teacher(backend=backend, **kwargs)
    assert summary.completed == 4 and summary.failed == 0
    records = read_jsonl(tmp_path / "out" / "svamp" / "test.teacher.jsonl")
    assert all(len(r["teacher_raw"]) == 1 and isinstance(r["teacher_raw"][0], str) for r in records)
    # Greedy decoding does not depend on batch neighbours or order.
    prompt_set = prompts.load_exemplars("svamp", str(checkpoint / "exemplars.json"))
    swapped = backend.generate_batch([prompts.render_completion(prompt_set, records[i]["input"]) for i in (3, 0)],
                                     SamplingParams(max_tokens=4))
    assert [c.texts[0] for c in swapped] == [records[3]["teacher_raw"][0], records[0]["teacher_raw"][0]]
    assert run_teacher(backend=backend, **kwargs).from_cache == 4
    with pytest.raises(UserError, match="plain-text prompts"):
        backend.generate_batch([[{"role": "user", "content": "hi"}]], SamplingParams())
    backend.max_input_length = 16
    with pytest.raises(UserError, match="input limit"):
        backend.generate_batch(["Ann has apples " * 20], SamplingParams())
