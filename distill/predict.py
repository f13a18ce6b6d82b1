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
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from distill import decoding
from distill.compilation_cache import enable_user_compilation_cache
from distill.cpu import print_emulated_bfloat16_note
from distill.xla_flags import single_threaded_eigen
from distill.errors import UserError
from distill.jsonl import read_jsonl, write_jsonl
from distill.models.t5 import T5, T5Config, init_cache
from distill.run_dir import load_trained

# --task: which of the model's task prefixes (distill/task_prefixes.py, as the run recorded them) goes
# before each input; "none" sends the inputs as they are.
TASKS = ("label", "rationale", "none")


def task_input_prefix(task_prefixes: Mapping[str, str], task: str) -> str:
    """The text `distill predict` / `distill serve` put before each input for `--task`."""
    return "" if task == "none" else task_prefixes[task]


METHODS = ("greedy", "beam", "sample")
# Bounds on the CLI's sizes: each scales the KV cache and the compiled program (1e9 would exhaust memory).
MAX_LENGTH, MAX_BATCH_SIZE, MAX_BEAMS = 1 << 14, 4096, 64


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
    index, so `decoding.beam_search` can expand and reorder it per beam (the
    `beam_invariant` leaves stay per row: the cross-attention takes each row's
    beams as its queries, distill/models/layers.py). The parameters are closed
    over (shared by all rows and beams).
    """
    model = T5(config)

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

    cache = init_cache(config, params, encoded, encoder_input_tokens, max_decode_length=max_decode_length)
    state = {"cache": cache, "encoded": encoded, "encoder_input_tokens": encoder_input_tokens}
    return tokens_to_logits, state


def beam_invariant(path: tuple) -> bool:
    """State leaves equal across the beams of a row: inputs, encoder outputs, cross-attention cache.

    (The cross-attention keys/values are projected from the encoder outputs,
    which every beam of a row shares.) beam_search keeps them once per row.
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


# The T5 params that only ever enter products (attention and MLP projections, untied logits).
_PRODUCT_WEIGHTS = frozenset({"query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo", "logits_dense"})


def decoding_params(config: T5Config, params: Any) -> Any:
    """`params` for decoding many batches: product weights stored in the products' operand dtype.

    With 16-bit products (`T5Config.matmul_dtype`) each decode would otherwise cast every
    weight matrix from float32 again: on T5 v1.1 small about 50 ms a batch of 32, the
    vocabulary matrix alone 35 ms (XLA:CPU converts to bfloat16 at about 3 GB/s). The cast
    is the same rounding either way, so predictions do not change; norms, the relative
    position tables and the token embedding (looked up, not multiplied) stay as they are.
    Float32 products get `params` back unchanged.
    """
    params = _plain_params(params)
    operand = config.matmul_operand_dtype
    if jnp.finfo(operand).bits != 16:
        return params

    def cast(path, leaf):
        return leaf.astype(operand) if getattr(path[-1], "key", None) in _PRODUCT_WEIGHTS else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


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


def detokenize(vocabulary: Vocabulary, ids: list[int], *, eos_id: int, unk_id: int = 2) -> str:
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


# A batch width that fewer batches than this need is decoded at the call's next width up (at most
# twice as wide): one decode program fewer to compile (1-2 s for T5 tiny on two cores) for a few
# encoder passes over padding (about 0.2 s a batch of 32 at 128 against 64 columns; README.md,
# "Decoding and distill predict").
MIN_BATCHES_PER_WIDTH = 4


def batch_shapes(lengths: Sequence[int], batch_size: int, max_input_length: int, *,
                 merge: bool = True) -> list[tuple[int, int]]:
    """(rows, columns) of each batch when `lengths` (ascending) are taken `batch_size` at a time.

    Each batch's own shape: columns the power-of-two bucket of its longest input (at least 8,
    at most max_input_length), rows batch_size or, for a shorter last batch, its power-of-two
    bucket. With `merge` (one-off decodes such as `distill predict`, where compiling dominates):
    a width fewer than MIN_BATCHES_PER_WIDTH batches need moves up to the next width in use when
    that is at most twice as wide, and a shorter last batch fills its rows where a full batch
    shares its columns. Without it (the same inputs decoded again and again, as the evaluations
    during training do: each program compiles once, padding would cost every time) every batch
    keeps its own shape.
    """
    chunks = [lengths[start:start + batch_size] for start in range(0, len(lengths), batch_size)]
    needed = [_bucket(max(chunk), max_input_length, 8) for chunk in chunks]
    own_rows = [_bucket(len(chunk), batch_size, 1) for chunk in chunks]
    if not merge:
        return list(zip(own_rows, needed))
    widths = sorted(set(needed))
    target = {width: width for width in widths}
    for narrow, wide in zip(widths, widths[1:]):
        group = [width for width in widths if target[width] == narrow]
        if (sum(needed.count(width) for width in group) < MIN_BATCHES_PER_WIDTH
                and all(wide <= 2 * width for width in group)):
            for width in group:
                target[width] = wide
    columns = [target[width] for width in needed]
    full_widths = {width for chunk, width in zip(chunks, columns) if len(chunk) == batch_size}
    return [(batch_size if width in full_widths else rows, width) for rows, width in zip(own_rows, columns)]


def decode_texts(
    config: T5Config,
    params: Any,
    vocabulary: Vocabulary,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_input_length: int = 512,
    **options: Any,
) -> list[str]:
    """Predictions for `texts`, in order: each text is tokenized, then `decode_ids` runs.

    `options` (method, num_beams, max_decode_length, length_penalty, rng,
    temperature, top_k, top_p) go to `decode_ids`.
    """
    encoded = [list(vocabulary.encode(text)) for text in texts]
    return decode_ids(config, params, vocabulary, encoded, batch_size=batch_size, max_input_length=max_input_length,
                      **options)


def decode_ids(
    config: T5Config,
    params: Any,
    vocabulary: Vocabulary,
    inputs: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
    max_input_length: int = 512,
    method: str = "greedy",
    num_beams: int = 4,
    max_decode_length: int = 64,
    length_penalty: float = 1.0,
    merge_shapes: bool = True,
    **sampling: Any,
) -> list[str]:
    """Predictions for already tokenized inputs (with or without a final EOS), in order.

    Each input is cut to max_input_length - 1 tokens and given EOS (as seqio
    and HF do for T5 inputs). Inputs are sorted by length and batched; the batch
    shapes come from `batch_shapes` (powers of two; with `merge_shapes`, rarely
    needed widths merged up), so a call compiles a few programs and repeated calls
    reuse them.
    `sampling` (rng, temperature, top_k, top_p) goes to `predict_batch`.
    """
    if batch_size < 1 or max_input_length < 2:
        raise UserError(f"need batch_size >= 1 and max_input_length >= 2, got {batch_size}, {max_input_length}")
    eos, pad = config.eos_token_id, config.pad_token_id
    encoded = [_with_eos(list(ids), eos, max_input_length) for ids in inputs]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    predictions: list[str] = [""] * len(encoded)
    params = decoding_params(config, params)
    shapes = batch_shapes([len(encoded[i]) for i in order], batch_size, max_input_length, merge=merge_shapes)
    for start, (rows, columns) in zip(range(0, len(order), batch_size), shapes):
        chunk = order[start:start + batch_size]
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
            predictions[i] = detokenize(vocabulary, tokens[row].tolist(), eos_id=eos)
    return predictions


def _with_eos(ids: list[int], eos: int, max_length: int) -> list[int]:
    """ids without a trailing EOS, cut to max_length - 1, then EOS."""
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    return ids[: max_length - 1] + [eos]


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------


def read_inputs(path: str) -> list[dict]:
    """The records of a JSONL input file; each must be {"input": str, ...} (blank lines skipped)."""
    records = []
    for number, record in read_jsonl(path, hint="pass an existing --input-file"):
        if not isinstance(record.get("input"), str):
            raise UserError(f'{path}:{number}: expected an object with a string "input" field')
        records.append(record)
    return records


MATMUL_DTYPE_HELP = ("operand dtype of the weight products: bfloat16 multiplies in bfloat16 with float32 sums "
                     "(about 1.5x faster on CPUs with avx512_bf16; where the top tokens are close the outputs can differ, "
                     "often so for an untrained model); "
                     "default: the checkpoint's, float32 for a Hugging Face folder")


def with_matmul_dtype(config: T5Config, matmul_dtype: str | None) -> T5Config:
    """config with T5Config.matmul_dtype = `matmul_dtype` (the --matmul-dtype flag), or as it is when None."""
    return config if matmul_dtype is None else config.replace(matmul_dtype=matmul_dtype)


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
    parser.add_argument("--task", choices=TASKS, default="label", help=(
        "the task prefix put before each input, as the model was trained with it (run.json or the export's "
        'config.json; by default "[label] " and "[rationale] "), or none (default: label)'))
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length**penalty")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-decode-length", type=int, default=128)
    parser.add_argument("--max-input-length", type=int, default=512)
    parser.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default=None, help=MATMUL_DTYPE_HELP)
    args = parser.parse_args(argv)
    if args.input_file and not args.output_file:
        parser.error("--input-file needs --output-file")
    if args.output_file and not args.input_file:
        parser.error("--output-file goes with --input-file")
    for name, limit in (("batch_size", MAX_BATCH_SIZE), ("max_decode_length", MAX_LENGTH),
                        ("max_input_length", MAX_LENGTH), ("num_beams", MAX_BEAMS)):
        if not 1 <= getattr(args, name) <= limit:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be from 1 to {limit:,}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    single_threaded_eigen()  # before jax makes its CPU backend (distill/xla_flags.py)
    enable_user_compilation_cache()  # the decoder compiled by an earlier run is read back (distill/compilation_cache.py)
    records = read_inputs(args.input_file) if args.input_file else [{"input": args.input}]
    if args.output_file:  # Fail before loading the model, not after decoding.
        if not Path(args.output_file).parent.is_dir():
            raise UserError(f"output directory {Path(args.output_file).parent} does not exist")
    trained = load_trained(args.checkpoint, require_tokenizer=True)
    config, params, vocabulary = trained.config, trained.params, trained.tokenizer()
    config = with_matmul_dtype(config, args.matmul_dtype)
    print_emulated_bfloat16_note(config.matmul_operand_dtype.name)
    prefix = task_input_prefix(trained.task_prefixes, args.task)
    predictions = decode_texts(
        config, params, vocabulary, [prefix + record["input"] for record in records],
        batch_size=args.batch_size, max_input_length=args.max_input_length,
        method=args.decoder, num_beams=args.num_beams, max_decode_length=args.max_decode_length,
        length_penalty=args.length_penalty,
    )
    if not args.input_file:
        print(predictions[0])
        return 0
    write_jsonl(args.output_file, ({**r, "prediction": p} for r, p in zip(records, predictions)))
    print(f"wrote {len(records)} predictions to {args.output_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from distill import cli

    sys.exit(cli.main(["predict", *sys.argv[1:]], process_entry=True))
