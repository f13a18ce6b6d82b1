"""Predictions from a T5 checkpoint: batched, cached, jit-compiled decoding, and `distill predict`.

Three layers, each usable alone:

- `make_tokens_to_logits`: binds the Flax T5 decoder (one token per step against
  its KV cache) to `distill.decoding`'s `TokensToLogits` protocol.
- `predict_batch`: token ids in, token ids out. Encoder, cache creation and the
  whole decode loop are one jit-compiled program, compiled once per
  (config, decoding settings, input shape) and reused.
- `decode_texts`: strings in, strings out, in order. Inputs are sorted by
  length and padded to a few bucket shapes, so a long list compiles a handful
  of programs, not one per batch.

`distill predict --checkpoint DIR --input TEXT` (or `--input-file F.jsonl
--output-file OUT.jsonl`) loads a Hugging Face T5 directory (config.json,
weights, spiece.model) or a training run (model dir or one step's
checkpoint, with the run's SentencePiece vocabulary), adds the task prefix and
prints / writes the predictions.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from distill import decoding
from distill.errors import UserError
from distill.models.t5 import T5, T5Config, init_cache

TASK_PREFIXES = {"label": "[label] ", "rationale": "[rationale] ", "none": ""}
METHODS = ("greedy", "beam", "sample")


class Vocabulary(Protocol):
    """What decoding needs from a tokenizer: seqio.SentencePieceVocabulary (`vocab_size`)
    and sentencepiece.SentencePieceProcessor (`get_piece_size()`) both qualify."""

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# ----------------------------------------------------------------------------
# Model -> TokensToLogits
# ----------------------------------------------------------------------------


def make_tokens_to_logits(
    config: T5Config,
    params: Any,
    encoded: jax.Array,
    encoder_input_tokens: jax.Array,
    *,
    max_decode_length: int,
) -> tuple[decoding.TokensToLogits, dict]:
    """The decoder step and its initial state for inputs already run through the encoder.

    encoded [b, Li, d_model], encoder_input_tokens [b, Li] (0 = padding).
    Returns `(tokens_to_logits, state)` with state = {"cache", "encoded",
    "encoder_input_tokens"}: every leaf batch-leading except the cache's scalar
    index, so `decoding.beam_search` can expand and reorder it per beam. The
    parameters are closed over (shared by all rows and beams).
    """
    model = T5(config)
    batch_size, encoder_length = encoder_input_tokens.shape

    def tokens_to_logits(tokens: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        logits, mutated = model.apply(
            {"params": params, "cache": state["cache"]},
            state["encoded"],
            state["encoder_input_tokens"],
            tokens,
            decode=True,
            max_decode_length=max_decode_length,
            mutable=["cache"],
            method=T5.decode,
        )
        return logits[:, -1, :], {**state, "cache": mutated["cache"]}

    cache = init_cache(config, params, batch_size=batch_size, max_decode_length=max_decode_length,
                       encoder_length=encoder_length)
    state = {"cache": cache, "encoded": encoded, "encoder_input_tokens": encoder_input_tokens}
    return tokens_to_logits, state


def beam_invariant(path: tuple) -> bool:
    """State leaves equal across the beams of a row: inputs, encoder outputs, cross-attention cache.

    (The cross-attention keys/values are projected from the encoder outputs,
    which every beam of a row shares.) beam_search skips reordering them.
    """
    names = {getattr(key, "key", None) for key in path}
    return bool(names & {"encoded", "encoder_input_tokens", "encoder_decoder_attention"})


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything that changes the compiled decode program (besides shapes and the config).

    The length penalty is not here: it is a runtime argument, so trying several
    values compiles one beam search.
    """

    method: str
    num_beams: int
    max_decode_length: int
    temperature: float
    top_k: int
    top_p: float


@functools.lru_cache(maxsize=32)
def _compiled_decoder(config: T5Config, settings: _Settings):
    """jit(params, encoder_input_tokens [b, Li], rng, length_penalty) -> tokens [b, L]; cached per shape."""
    model = T5(config)
    s = settings

    def run(params, encoder_input_tokens, rng, length_penalty):
        encoded = model.apply({"params": params}, encoder_input_tokens, method=T5.encode)
        step, state = make_tokens_to_logits(config, params, encoded, encoder_input_tokens,
                                            max_decode_length=s.max_decode_length)
        common = dict(batch_size=encoder_input_tokens.shape[0], max_decode_length=s.max_decode_length,
                      eos_id=config.eos_token_id)
        if s.method == "beam":
            tokens, _ = decoding.beam_search(step, state, num_beams=s.num_beams, length_penalty=length_penalty,
                                             pad_id=config.pad_token_id, start_id=config.decoder_start_token_id,
                                             beam_invariant=beam_invariant, **common)
            return tokens[:, 0]
        ids = dict(pad_id=config.pad_token_id, start_id=config.decoder_start_token_id)
        if s.method == "sample":
            return decoding.sample_decode(step, state, rng=rng, temperature=s.temperature, top_k=s.top_k,
                                          top_p=s.top_p, **ids, **common)
        return decoding.greedy_decode(step, state, **ids, **common)

    return jax.jit(run)


def _plain_params(params: Any) -> Any:
    params = nn.unbox(params)
    return params["params"] if "params" in params else params


def predict_batch(
    config: T5Config,
    params: Any,
    encoder_input_tokens: jax.Array | np.ndarray,
    *,
    method: str = "greedy",
    num_beams: int = 4,
    max_decode_length: int = 64,
    length_penalty: float = 1.0,
    rng: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """Decode a batch: encoder_input_tokens [b, Li] int32 (0 = pad) -> tokens [b, max_decode_length].

    method "greedy", "beam" (the best of `num_beams`, HF length-penalty rule) or
    "sample" (temperature / top_k / top_p, deterministic per `rng`). Tokens
    after EOS are 0. Compiled once per (config, settings, shape) and cached.
    """
    if method not in METHODS:
        raise UserError(f"unknown decoding method {method!r}; use one of {', '.join(METHODS)}")
    if max_decode_length < 1:
        raise UserError(f"max_decode_length must be >= 1, got {max_decode_length}")
    if method == "beam" and num_beams < 1:
        raise UserError(f"num_beams must be >= 1, got {num_beams}")
    settings = _Settings(method, int(num_beams) if method == "beam" else 0, int(max_decode_length),
                         float(temperature) if method == "sample" else 0.0,
                         int(top_k) if method == "sample" else 0, float(top_p) if method == "sample" else 0.0)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
    return _compiled_decoder(config, settings)(_plain_params(params), tokens, rng, jnp.float32(length_penalty))


# ----------------------------------------------------------------------------
# Text in, text out
# ----------------------------------------------------------------------------


def _detokenize(vocabulary: Vocabulary, ids: list[int], *, eos_id: int, unk_id: int = 2) -> str:
    """Text of the ids before EOS. Ids the tokenizer does not have (a model's vocab_size is
    often rounded up past the SentencePiece size, e.g. 32128 vs 32000) become `unk_id`."""
    ids = ids[: ids.index(eos_id)] if eos_id in ids else ids
    size = vocabulary.get_piece_size() if hasattr(vocabulary, "get_piece_size") else vocabulary.vocab_size
    return vocabulary.decode([i if 0 <= i < size else unk_id for i in ids])


def _bucket(n: int, limit: int, smallest: int) -> int:
    """The smallest power of two >= n (at least `smallest`), capped at `limit`."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, limit)


def decode_texts(
    config: T5Config,
    params: Any,
    vocabulary: Vocabulary,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_input_length: int = 512,
    method: str = "greedy",
    num_beams: int = 4,
    max_decode_length: int = 64,
    length_penalty: float = 1.0,
    **sampling: Any,
) -> list[str]:
    """Predictions for `texts`, in order.

    Each text is tokenized, cut to max_input_length - 1 tokens and given EOS (as
    seqio and HF do for T5 inputs). Texts are sorted by length and batched;
    batch shapes are rounded up to powers of two (rows up to batch_size, columns
    up to max_input_length) so repeated calls reuse a few compiled programs.
    `sampling` (rng, temperature, top_k, top_p) goes to `predict_batch`.
    """
    if batch_size < 1 or max_input_length < 2:
        raise UserError(f"need batch_size >= 1 and max_input_length >= 2, got {batch_size}, {max_input_length}")
    eos, pad = config.eos_token_id, config.pad_token_id
    encoded = [list(vocabulary.encode(text))[: max_input_length - 1] + [eos] for text in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    predictions: list[str] = [""] * len(texts)
    params = _plain_params(params)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = _bucket(len(chunk), batch_size, 1)
        columns = _bucket(max(len(encoded[i]) for i in chunk), max_input_length, 8)
        batch = np.full((rows, columns), pad, np.int32)
        batch[len(chunk):, 0] = eos  # filler rows: an empty input
        for row, i in enumerate(chunk):
            batch[row, :len(encoded[i])] = encoded[i]
        options = dict(sampling)
        if options.get("rng") is not None:  # a fresh stream per batch, still fixed by the caller's key
            options["rng"] = jax.random.fold_in(options["rng"], start)
        tokens = np.asarray(predict_batch(config, params, batch, method=method, num_beams=num_beams,
                                          max_decode_length=max_decode_length, length_penalty=length_penalty,
                                          **options))
        for row, i in enumerate(chunk):
            predictions[i] = _detokenize(vocabulary, tokens[row].tolist(), eos_id=eos)
    return predictions


# ----------------------------------------------------------------------------
# Loading a checkpoint for prediction
# ----------------------------------------------------------------------------


def _sentencepiece(path: Path) -> Vocabulary:
    import sentencepiece

    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as err:
        raise UserError(f"cannot read SentencePiece model {path}: {err}") from None


def load_for_prediction(checkpoint: str) -> tuple[T5Config, Any, Vocabulary]:
    """(config, params, vocabulary) from a checkpoint on disk.

    `checkpoint` is a Hugging Face T5 directory (config.json, weights and
    spiece.model), a training model dir (run.json; its latest finished step)
    or one `<model_dir>/checkpoints/<step>` folder. The vocabulary of a
    training run is the one named in run.json, else `<model_dir>/vocab/spm.model`.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise UserError(f"checkpoint {checkpoint} does not exist; pass a Hugging Face T5 directory, a model dir "
                        "or <model_dir>/checkpoints/<step>")
    if (path / "config.json").is_file():
        tokenizer = path / "spiece.model"
        if not tokenizer.is_file():
            raise UserError(f"no SentencePiece tokenizer in {checkpoint}: expected {tokenizer} "
                            "(copy the model's spiece.model there)")
        from distill.models.checkpoints import load_hf_checkpoint

        config, params = load_hf_checkpoint(str(path))
        return config, params, _sentencepiece(tokenizer)
    return _load_training_run(path)


def _load_training_run(path: Path) -> tuple[T5Config, Any, Vocabulary]:
    """A training model dir or step checkpoint, with the run's SentencePiece vocabulary."""
    from distill.models.export import load_training_checkpoint

    config, params, tokenizer = load_training_checkpoint(path)
    if tokenizer is None:
        raise UserError(f"no vocabulary for {path}: run.json names none and there is no vocab/spm.model "
                        "in the model dir; copy the run's SentencePiece model to <model_dir>/vocab/spm.model")
    return config, params, _sentencepiece(tokenizer)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------


def _read_inputs(path: str) -> list[dict]:
    """The JSON records of an input file; blank lines are skipped, anything else must be {"input": str, ...}."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"input file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read input file {path}: {err}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg}); each line must be an object "
                            'like {"input": "..."}') from None
        if not isinstance(record, dict) or not isinstance(record.get("input"), str):
            raise UserError(f'{path}:{number}: expected an object with a string "input" field')
        records.append(record)
    return records


def _write_jsonl_atomically(path: str, records: list[dict]) -> None:
    target = Path(path)
    if not target.parent.is_dir():
        raise UserError(f"output directory {target.parent} does not exist")
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distill predict", description=(
        "Predict labels or rationales with a T5 checkpoint."))
    parser.add_argument("--checkpoint", required=True, help=(
        "Hugging Face T5 directory (config.json, weights, spiece.model), a training model dir (latest step) "
        "or <model_dir>/checkpoints/<step>"))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="one input text; the prediction is printed")
    source.add_argument("--input-file", help='JSONL file of {"input": ...} records')
    parser.add_argument("--output-file", help="JSONL output: the input records with a \"prediction\" field added")
    parser.add_argument("--task", choices=sorted(TASK_PREFIXES), default="label",
                        help='prefix added to each input: "[label] ", "[rationale] ", or none (default: label)')
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length**penalty")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-decode-length", type=int, default=128)
    parser.add_argument("--max-input-length", type=int, default=512)
    args = parser.parse_args(argv)
    if args.input_file and not args.output_file:
        parser.error("--input-file needs --output-file")
    if args.output_file and not args.input_file:
        parser.error("--output-file goes with --input-file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    records = _read_inputs(args.input_file) if args.input_file else [{"input": args.input}]
    if args.output_file:  # Fail before loading the model, not after decoding.
        if not Path(args.output_file).parent.is_dir():
            raise UserError(f"output directory {Path(args.output_file).parent} does not exist")
    config, params, vocabulary = load_for_prediction(args.checkpoint)
    prefix = TASK_PREFIXES[args.task]
    predictions = decode_texts(
        config, params, vocabulary, [prefix + record["input"] for record in records],
        batch_size=args.batch_size, max_input_length=args.max_input_length,
        method=args.decoder, num_beams=args.num_beams, max_decode_length=args.max_decode_length,
        length_penalty=args.length_penalty,
    )
    if not args.input_file:
        print(predictions[0])
        return 0
    _write_jsonl_atomically(args.output_file, [{**r, "prediction": p} for r, p in zip(records, predictions)])
    print(f"wrote {len(records)} predictions to {args.output_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
