"""`distill predict` on a Hugging Face T5 directory the test builds (random tiny T5 + SentencePiece).

The expected predictions come from transformers' own `generate` on the same
weights, fed the same SentencePiece ids (task prefix + input + EOS), and
detokenized with the same SentencePiece model.
"""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

from model_helpers import hf_t5_model  # noqa: E402

from distill import cli, predict  # noqa: E402
from distill.run_dir import load_trained  # noqa: E402

EOS = 1
MODEL_VOCAB = 128
NEW_TOKENS = 6
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a man is playing a guitar on the street",
    "how many apples are left if you eat three of seven",
    "[label] [rationale] entailment neutral contradiction",
    "she sold four cups of lemonade and two cookies",
] * 20


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """An HF T5 directory: config.json + model.safetensors + spiece.model (pad 0, eos 1, unk 2)."""
    directory = tmp_path_factory.mktemp("hf_predict")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(directory / "spiece"), vocab_size=100,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", hard_vocab_limit=False,
        minloglevel=2,
    )
    (directory / "spiece.vocab").unlink()
    model = hf_t5_model("t5_1_1", seed=1, vocab_size=MODEL_VOCAB)
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 3.0
    model.save_pretrained(str(directory))
    return directory, model, sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model"))


def _hf_predictions(model, vocab, texts, **generate_kwargs) -> list[str]:
    """Reference: transformers generate on the SentencePiece ids, detokenized.

    The model's vocabulary (128) is larger than the tokenizer's (~100), as T5's
    32128 is larger than its 32000 pieces: ids past the tokenizer read as unk (2).
    """
    encoded = [vocab.encode(text) + [EOS] for text in texts]
    ids = np.zeros((len(texts), max(map(len, encoded))), np.int64)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = tokens
    with torch.inference_mode():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(ids != 0).long(),
                             do_sample=False, max_new_tokens=NEW_TOKENS, **generate_kwargs).numpy()
    results = []
    for row in out[:, 1:].tolist():
        row = row[: row.index(EOS)] if EOS in row else row
        results.append(vocab.decode([i if i < vocab.get_piece_size() else 2 for i in row]))
    return results


def test_predict_text_prints_the_hf_prediction(hf_dir, capsys):
    directory, model, vocab = hf_dir
    assert cli.main(["predict", "--checkpoint", str(directory), "--input", "how many apples are left",
                     "--max-decode-length", str(NEW_TOKENS)]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    assert printed == _hf_predictions(model, vocab, ["[label] how many apples are left"])[0]
    assert printed  # a random model still emits some text


def test_predict_file_adds_predictions_in_order(hf_dir, tmp_path):
    directory, model, vocab = hf_dir
    records = [
        {"id": "a", "input": "the quick brown fox jumps over the lazy dog and the cat", "label": "x"},
        {"id": "b", "input": "a man"},
        {"id": "c", "input": "she sold four cups of lemonade"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n" + json.dumps(records[2]) + "\n")
    target = tmp_path / "out.jsonl"
    # Batch size 2 with inputs sorted by length: the batches mix the original order.
    assert predict.main(["--checkpoint", str(directory), "--input-file", str(source), "--output-file", str(target),
                         "--task", "none", "--batch-size", "2", "--max-decode-length", str(NEW_TOKENS)]) == 0
    written = [json.loads(line) for line in target.read_text().splitlines()]
    expected = _hf_predictions(model, vocab, [r["input"] for r in records])
    assert written == [{**r, "prediction": p} for r, p in zip(records, expected)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"], "no temp files left behind"


def test_bfloat16_matmuls_decode_with_bfloat16_products(hf_dir, capsys):
    """--matmul-dtype bfloat16 reaches the decoder: the compiled program multiplies bf16 operands."""
    directory, model, vocab = hf_dir
    text = "she sold four cups of lemonade"
    assert predict.main(["--checkpoint", str(directory), "--input", text, "--task", "none",
                         "--max-decode-length", str(NEW_TOKENS), "--matmul-dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == _hf_predictions(model, vocab, [text])[0]  # no near-ties here
    trained = load_trained(str(directory), require_tokenizer=True)
    config = predict.with_matmul_dtype(trained.config, "bfloat16")
    assert predict.with_matmul_dtype(trained.config, None) is trained.config
    tokens = np.ones((1, 8), np.int32)
    hlo = jax.jit(lambda p: predict.predict_batch(config, p, tokens, max_decode_length=4)).lower(trained.params)
    assert "bf16" in hlo.as_text()


def test_predict_reads_a_training_run_and_its_vocabulary(hf_dir, tmp_path, capsys):
    """A model dir as `distill train` leaves it: run.json, checkpoints/<step>, vocab/spm.model."""
    import dataclasses
    import shutil

    import jax

    from distill.checkpointing import CheckpointManager

    directory, _, _ = hf_dir
    trained = load_trained(str(directory))
    config, params = trained.config, trained.params
    model_dir = tmp_path / "run"
    manager = CheckpointManager(str(model_dir), save_every=1, async_save=False)
    manager.save(7, {"params": jax.device_put(params)}, {"position": 0})
    manager.close()
    (model_dir / "run.json").write_text(json.dumps({"model_config": dataclasses.asdict(config)}))
    argv = ["--input", "how many apples are left", "--max-decode-length", str(NEW_TOKENS)]
    assert cli.main(["predict", "--checkpoint", str(model_dir), *argv]) == 2
    assert "spm.model" in capsys.readouterr().err
    (model_dir / "vocab").mkdir()
    shutil.copy(directory / "spiece.model", model_dir / "vocab" / "spm.model")
    outputs = []
    for checkpoint in (directory, model_dir, model_dir / "checkpoints" / "7"):
        assert cli.main(["predict", "--checkpoint", str(checkpoint), *argv]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0].strip()


def test_a_runs_task_prefixes_reach_predict_and_its_export(hf_dir, tmp_path, capsys):
    """A run trained with its own prefixes (run.json "task_prefixes") is prompted with them by `distill
    predict --task`, and its export carries them (config.json `task_specific_params`)."""
    import dataclasses
    import shutil

    from distill.checkpointing import CheckpointManager

    directory, _, _ = hf_dir
    trained = load_trained(str(directory))
    assert trained.task_prefixes == {"label": "[label] ", "rationale": "[rationale] "}  # any other T5 folder
    model_dir = tmp_path / "run"
    with CheckpointManager(str(model_dir), save_every=1, async_save=False) as manager:
        manager.save(3, {"params": jax.device_put(trained.params)}, {"position": 0})
    (model_dir / "vocab").mkdir()
    shutil.copy(directory / "spiece.model", model_dir / "vocab" / "spm.model")
    run_info = {"model_config": dataclasses.asdict(trained.config),
                "task_prefixes": {"label": "how many: ", "rationale": "the fox "}}
    (model_dir / "run.json").write_text(json.dumps(run_info))
    text = "apples are left"
    argv = ["--max-decode-length", str(NEW_TOKENS)]

    def predicted(checkpoint, task, given):
        assert cli.main(["predict", "--checkpoint", str(checkpoint), "--task", task, "--input", given, *argv]) == 0
        return capsys.readouterr().out

    outputs = {task: predicted(model_dir, task, text) for task in ("label", "rationale")}
    assert outputs["label"] == predicted(directory, "none", "how many: " + text)
    assert outputs["rationale"] == predicted(directory, "none", "the fox " + text)
    assert outputs["label"] != predicted(directory, "label", text)  # not the default "[label] "

    exported = tmp_path / "export"
    assert cli.main(["export", "--checkpoint", str(model_dir), "--out", str(exported)]) == 0
    capsys.readouterr()
    assert json.loads((exported / "config.json").read_text())["task_specific_params"] == {
        "label": {"prefix": "how many: "}, "rationale": {"prefix": "the fox "}}
    assert load_trained(str(exported)).task_prefixes == run_info["task_prefixes"]
    assert predicted(exported, "label", text) == outputs["label"]

    run_info["task_prefixes"] = {"label": 3, "rationale": "the fox "}
    (model_dir / "run.json").write_text(json.dumps(run_info))
    assert cli.main(["predict", "--checkpoint", str(model_dir), "--input", text, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json" in err[0] and "LABEL_PREFIX=3 must be a string" in err[0]


def test_beam_decoder_matches_hf_beam_search(hf_dir):
    directory, model, vocab = hf_dir
    trained = load_trained(str(directory))
    config, params, loaded_vocab = trained.config, trained.params, trained.tokenizer()
    texts = ["[rationale] a man is playing", "[label] three of seven"]
    ours = predict.decode_texts(config, params, loaded_vocab, texts, method="beam", num_beams=4,
                                max_decode_length=NEW_TOKENS, batch_size=2)
    assert ours == _hf_predictions(model, vocab, texts, num_beams=4)


def test_predict_errors_are_one_line_and_leave_outputs_alone(hf_dir, tmp_path, capsys):
    directory, _, _ = hf_dir
    target = tmp_path / "out.jsonl"
    target.write_text("precious\n")

    def run(*argv):
        code = cli.main(["predict", *argv])
        return code, capsys.readouterr().err

    code, err = run("--checkpoint", str(tmp_path / "nope"), "--input", "x")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "fine"}\n{"input": 3}\n')
    code, err = run("--checkpoint", str(directory), "--input-file", str(bad), "--output-file", str(target))
    assert code == 2 and f"{bad}:2" in err
    bad.write_text('{"input": "fine"}\nnot json\n')
    code, err = run("--checkpoint", str(directory), "--input-file", str(bad), "--output-file", str(target))
    assert code == 2 and f"{bad}:2" in err and "JSON" in err
    code, err = run("--checkpoint", str(directory), "--input-file", str(tmp_path / "missing.jsonl"),
                    "--output-file", str(target))
    assert code == 2 and "missing.jsonl" in err
    assert target.read_text() == "precious\n"
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((directory / "config.json").read_text())
    code, err = run("--checkpoint", str(no_tokenizer), "--input", "x")
    assert code == 2 and "spiece.model" in err


def test_a_tokenizer_larger_than_the_model_is_refused_before_decoding(hf_dir, tmp_path, capsys):
    """A 200-piece tokenizer on a 128-row model would decode garbage: one line naming both, exit 2."""
    directory, _, _ = hf_dir
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    for name in ("config.json", "model.safetensors"):
        (mismatched / name).write_bytes((directory / name).read_bytes())
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5 + [f"word{i} token{i}" for i in range(400)]),
        model_prefix=str(mismatched / "spiece"), vocab_size=200, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        model_type="unigram", minloglevel=2)
    assert cli.main(["predict", "--checkpoint", str(mismatched), "--input", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 200 pieces but the model" in err[0] and f"only {MODEL_VOCAB}" in err[0]


def test_predict_reads_back_its_own_output_with_unicode_line_separators(hf_dir, tmp_path):
    """U+2028 / U+2029 inside a string are written unescaped; the reader splits on \\n only."""
    directory, _, _ = hf_dir
    source, first, second = tmp_path / "in.jsonl", tmp_path / "out1.jsonl", tmp_path / "out2.jsonl"
    source.write_text(json.dumps({"input": "three\u2028of\u2029seven"}, ensure_ascii=False) + "\n", encoding="utf-8")
    argv = ["--checkpoint", str(directory), "--max-decode-length", str(NEW_TOKENS)]
    assert cli.main(["predict", *argv, "--input-file", str(source), "--output-file", str(first)]) == 0
    assert cli.main(["predict", *argv, "--input-file", str(first), "--output-file", str(second)]) == 0
    records = [json.loads(line) for line in second.read_text(encoding="utf-8").split("\n") if line]
    assert len(records) == 1 and records[0]["input"] == "three\u2028of\u2029seven"


@pytest.mark.parametrize("argv, message", [
    (["--max-decode-length", "1000000000"], "--max-decode-length 1000000000 must be from 1 to 16,384"),
    (["--batch-size", "0"], "--batch-size 0 must be from 1"),
])
def test_unbounded_sizes_are_refused(hf_dir, capsys, argv, message):
    directory, _, _ = hf_dir
    assert cli.main(["predict", "--checkpoint", str(directory), "--input", "x", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]

