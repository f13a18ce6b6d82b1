"""Vocabularies: T5 ids, deterministic training, loading, and the `distill vocab train` CLI."""
import os

import pytest
import sentencepiece as spm

from distill import cli, vocab
from distill.errors import UserError
from tasks_helpers import train_tiny_vocab


def test_training_on_svamp_is_deterministic_with_t5_ids(shared_data_dir, tmp_path):
    first = vocab.train_vocabulary_for_dataset("svamp", str(shared_data_dir), size=1000,
                                               out_path=str(tmp_path / "a" / "svamp.model"))
    second = vocab.train_vocabulary_for_dataset("svamp", str(shared_data_dir), size=1000,
                                                out_path=str(tmp_path / "b.model"))
    assert open(first, "rb").read() == open(second, "rb").read()
    assert os.listdir(tmp_path / "a") == ["svamp.model"]  # no temp file left behind
    processor = spm.SentencePieceProcessor(model_file=first)
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (0, 1, 2, -1)
    assert [processor.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert 500 < processor.get_piece_size() <= 1000
    pieces = processor.encode("[label] Luke scored 84 points", out_type=str)
    assert "[label]" in pieces[:2] and "<unk>" not in pieces
    assert processor.encode("84", out_type=str)[-2:] == ["8", "4"]  # digits split


def test_load_vocabulary_encodes_and_decodes(tmp_path):
    path = train_tiny_vocab(tmp_path / "tiny.model")
    loaded = vocab.load_vocabulary(path)
    assert loaded.eos_id == 1 and loaded.pad_id == 0 and loaded.unk_id == 2
    ids = loaded.encode("What is 3 plus 4?")
    assert ids and 0 not in ids and 1 not in ids
    assert loaded.decode(ids) == "What is 3 plus 4?"
    # A Hugging Face checkpoint folder holds the model as spiece.model.
    checkpoint = tmp_path / "hf"
    checkpoint.mkdir()
    (checkpoint / "spiece.model").write_bytes(open(path, "rb").read())
    assert vocab.load_vocabulary(str(checkpoint)).encode("What is 3 plus 4?") == ids


def test_load_vocabulary_rejects_missing_foreign_and_non_t5_files(tmp_path):
    with pytest.raises(UserError, match=r"vocabulary '.*nope.model' does not exist; .*distill vocab train"):
        vocab.load_vocabulary(str(tmp_path / "nope.model"))
    with pytest.raises(UserError, match="spiece.model"):
        vocab.load_vocabulary(str(tmp_path))  # a folder without spiece.model
    (tmp_path / "junk.model").write_text("not a model")
    with pytest.raises(UserError, match="is not a SentencePiece model"):
        vocab.load_vocabulary(str(tmp_path / "junk.model"))
    # SentencePiece's own defaults (unk 0, bos 1, eos 2) are not T5's.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g"] * 20), model_prefix=str(tmp_path / "spm"),
                                   vocab_size=12, hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(UserError, match="pad id -1 and eos id 2; .* pad=0 eos=1"):
        vocab.load_vocabulary(str(tmp_path / "spm.model"))


def test_train_vocabulary_rejects_empty_text_and_tiny_sizes(tmp_path):
    with pytest.raises(UserError, match="no text"):
        vocab.train_vocabulary(["", "  "], size=100, out_path=str(tmp_path / "v.model"))
    with pytest.raises(UserError, match="too small"):
        vocab.train_vocabulary(["abc"], size=3, out_path=str(tmp_path / "v.model"))
    assert not (tmp_path / "v.model").exists()


def test_cli_trains_and_reports_bad_input(shared_data_dir, tmp_path, capsys):
    out = tmp_path / "v.model"
    assert cli.main(["vocab", "train", "--data-dir", str(shared_data_dir), "--dataset", "svamp",
                     "--size", "600", "--out", str(out)]) == 0
    assert f"wrote {out} (" in capsys.readouterr().out
    assert spm.SentencePieceProcessor(model_file=str(out)).eos_id() == 1

    assert cli.main(["vocab", "train", "--data-dir", str(shared_data_dir), "--dataset", "snli",
                     "--out", str(tmp_path / "x.model")]) == 2
    assert "error: unknown dataset 'snli'" in capsys.readouterr().err
    assert cli.main(["vocab", "train", "--data-dir", str(tmp_path / "missing"), "--dataset", "svamp",
                     "--out", str(tmp_path / "x.model")]) == 2
    assert "missing' does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["vocab", "train", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "x.model")]) == 2
    assert "no dataset found in" in capsys.readouterr().err
    assert not (tmp_path / "x.model").exists()
