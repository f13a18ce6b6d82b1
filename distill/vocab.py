"""SentencePiece vocabularies: load one from a path, or train one from a dataset.

Two kinds of students need two kinds of vocabularies:

- pretrained students (T5, Flan-T5) use the vocabulary they were trained
  with: the public T5 SentencePiece model, or the `spiece.model` inside a
  Hugging Face checkpoint folder (`load_vocabulary` accepts either path);
- from-scratch students and offline tests use a small vocabulary trained from
  the dataset's own texts (`train_vocabulary_for_dataset`, CLI
  `distill vocab train`), which needs no network at all.

Every vocabulary follows T5's id convention, which the model and decoding
rely on: pad = 0, eos = 1, unk = 2, no bos. Training is deterministic (one
thread, all sentences in their given order, no sampling), so the same data
and size give byte-identical model files.

This module imports sentencepiece only; seqio (and so TensorFlow) is imported
inside `load_vocabulary`, which returns a `seqio.SentencePieceVocabulary`.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from distill.atomic import write_atomically
from distill.errors import UserError

if TYPE_CHECKING:
    import seqio
    import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# The default task prefixes ("[label] ", "[rationale] ") as whole pieces.
TASK_PREFIX_SYMBOLS = ("[label]", "[rationale]")
# The name of the vocabulary file inside a Hugging Face T5 checkpoint folder.
HF_VOCAB_FILENAME = "spiece.model"


def _is_remote(path: str) -> bool:
    return "://" in path


def _resolve_model_file(path: str) -> str:
    """`path` itself, or `<path>/spiece.model` when path is a checkpoint folder."""
    if _is_remote(path):
        import tensorflow as tf

        exists, is_dir = tf.io.gfile.exists, tf.io.gfile.isdir
    else:
        exists, is_dir = os.path.exists, os.path.isdir
    if is_dir(path):
        path = path.rstrip("/") + "/" + HF_VOCAB_FILENAME
    if not exists(path):
        raise UserError(
            f"vocabulary {path!r} does not exist; pass a SentencePiece .model file or a Hugging Face "
            "checkpoint folder with spiece.model, or train one with `distill vocab train`"
        )
    return path


def _read_bytes(path: str) -> bytes:
    if _is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def load_tokenizer(path: str) -> "spm.SentencePieceProcessor":
    """The SentencePiece processor stored at `path` (a .model file or an HF checkpoint folder).

    Needs no TensorFlow (decoding and serving use it). Checks that it is a
    SentencePiece model with T5's ids (pad 0, eos 1); a missing or foreign
    file is a `UserError` naming it.
    """
    import sentencepiece as spm

    model_file = _resolve_model_file(path)
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(_read_bytes(model_file))
    except (RuntimeError, OSError) as err:
        raise UserError(f"vocabulary {model_file!r} is not a SentencePiece model ({err}); pass a .model file") from None
    if processor.pad_id() != PAD_ID or processor.eos_id() != EOS_ID:
        raise UserError(
            f"vocabulary {model_file!r} has pad id {processor.pad_id()} and eos id {processor.eos_id()}; "
            f"the student needs T5's convention pad={PAD_ID} eos={EOS_ID} (train one with `distill vocab train`)"
        )
    return processor


def load_vocabulary(path: str) -> "seqio.SentencePieceVocabulary":
    """The seqio vocabulary stored at `path`, after `load_tokenizer`'s checks (imports seqio)."""
    load_tokenizer(path)
    import seqio

    return seqio.SentencePieceVocabulary(_resolve_model_file(path))


def check_fits(pieces: int, vocab_size: int, vocabulary: str, model: str,
               fix: str = "use the tokenizer the model was trained with") -> None:
    """UserError when a tokenizer has more pieces than the model has embedding rows.

    Ids past the rows would index garbage (or clip silently on some
    backends), so every entry point that encodes text for a model checks it.
    """
    if pieces > vocab_size:
        raise UserError(f"vocabulary {vocabulary} has {pieces} pieces but the model {model} has only {vocab_size} "
                        f"embedding rows (vocab_size): {fix}")


def _write_atomically(data: bytes, out_path: str) -> None:
    """Write `data` to out_path without ever leaving a half-written file there."""
    if _is_remote(out_path):
        import tensorflow as tf

        tmp_path = f"{out_path}.tmp-{os.getpid()}"
        with tf.io.gfile.GFile(tmp_path, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp_path, out_path, overwrite=True)
        return
    write_atomically(out_path, data)


def train_vocabulary(texts: Iterable[str], *, size: int, out_path: str,
                     user_defined_symbols: Sequence[str] = ()) -> str:
    """Train a unigram SentencePiece model on `texts` and write it to `out_path`.

    Ids follow T5 (pad 0, eos 1, unk 2, no bos). `size` is an upper bound:
    a corpus too small for that many pieces yields fewer instead of failing.
    Digits are split into single pieces, which helps arithmetic labels
    (SVAMP's `( 84.0 / 2.0 )`); `user_defined_symbols` (e.g. the task
    prefixes) always become single pieces. Characters never seen in `texts`
    encode as unk. Returns out_path.
    """
    import sentencepiece as spm

    if size < 8:
        raise UserError(f"vocabulary size {size} is too small; use at least a few hundred pieces")
    sentences = [line for text in texts if text for line in text.splitlines() if line.strip()]
    if not sentences:
        raise UserError(f"no text to train the vocabulary for {out_path!r} on; check the dataset")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=size,
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        character_coverage=1.0,
        user_defined_symbols=list(user_defined_symbols),
        split_digits=True,
        # Determinism: every sentence, in order, on one thread.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    _write_atomically(model.getvalue(), out_path)
    return out_path


def dataset_texts(examples: Iterable[dict]) -> Iterable[str]:
    """The texts a vocabulary must cover: inputs, gold and teacher labels, rationales."""
    for example in examples:
        for key in ("input", "label", "teacher_label", "rationale"):
            if example.get(key):
                yield example[key]


def _train_split_texts(names: Sequence[str], data_dir: str) -> Iterable[str]:
    from distill.data import datasets

    if not data_dir or not os.path.isdir(data_dir):
        raise UserError(f"data dir {data_dir!r} does not exist; pass --data-dir DIR or set DISTILL_DATA_DIR")
    for name in names:
        yield from dataset_texts(datasets.load_examples(name, "train", data_dir))


def train_vocabulary_for_dataset(name: str, data_dir: str, *, size: int, out_path: str) -> str:
    """Train a vocabulary on a dataset's train split (inputs, labels, teacher rationales).

    Only the train split is read, so no test text shapes the vocabulary; the
    default task prefixes are single pieces. Returns out_path.
    """
    return train_vocabulary(list(_train_split_texts([name], data_dir)), size=size, out_path=out_path,
                            user_defined_symbols=TASK_PREFIX_SYMBOLS)


def main(argv: list[str] | None = None) -> int:
    """`distill vocab train [--data-dir DIR] [--dataset NAME] --size N --out FILE`."""
    parser = argparse.ArgumentParser(prog="distill vocab train", description=train_vocabulary_for_dataset.__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("DISTILL_DATA_DIR"),
                        help="dataset root (default: $DISTILL_DATA_DIR); for --dataset jsonl the folder of *.jsonl")
    parser.add_argument("--dataset", default=None,
                        help="svamp, cqa, esnli, anli1 or jsonl (default: every dataset found in the data dir)")
    parser.add_argument("--size", type=int, default=4000, help="number of pieces (upper bound)")
    parser.add_argument("--out", required=True, help="where to write the .model file (local or gs://)")
    args = parser.parse_args(argv)
    if not args.data_dir:
        raise UserError("no data dir: pass --data-dir DIR or set DISTILL_DATA_DIR")
    if not os.path.isdir(args.data_dir):
        raise UserError(f"data dir {args.data_dir!r} does not exist; pass --data-dir DIR or set DISTILL_DATA_DIR")
    if args.dataset:
        names = [args.dataset]
    else:
        from distill.data.datasets import available_datasets

        names = available_datasets(args.data_dir)
        if not names:
            raise UserError(f"no dataset found in {args.data_dir!r}; pass --dataset NAME (jsonl for your own files)")
    out = train_vocabulary(list(_train_split_texts(names, args.data_dir)), size=args.size, out_path=args.out,
                           user_defined_symbols=TASK_PREFIX_SYMBOLS)
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_proto=_read_bytes(out)).get_piece_size()
    print(f"wrote {out} ({pieces} pieces from the train split of {', '.join(names)}; "
          f"pad={PAD_ID} eos={EOS_ID} unk={UNK_ID})")
    return 0


if __name__ == "__main__":
    from distill import cli

    sys.exit(cli.main(["vocab", "train", *sys.argv[1:]]))
