"""The model side of the server: bucket shapes, padding, the compiled decoders, start-up compilation.

Every batch runs through `distill.predict.predict_batch`, which compiles one program per
(decoding settings, input shape). So that requests of any length and any arrival pattern run a
fixed handful of programs, each batch is padded to a bucket shape [rows, length]:

- rows: the next of 1, 2, 4, 8, 12, 16, 24, 32, ... up to max_batch_size (itself a bucket): from 8
  on, 1.5x rungs between the powers of two, so a batch of 17-24 rows is not padded to 32;
- length (encoder tokens, EOS included): the next rung of 16, 32, 64, ... (powers of two from
  16) below max_input_tokens, or max_input_tokens itself. Rungs of two, not four: a batch's cost
  grows with its encoder length (scripts/bench_serve.py), and padding a 20-token prompt to 64
  doubles it.

The decode length is always max_new_tokens: a request for fewer tokens is cut afterwards
(distill/serve/protocol.py), so it never compiles a program of its own. `warm_up` compiles the
greedy program for every bucket shape before the server accepts requests; sampling and beam
search compile per (settings, shape) on first use.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from typing import NamedTuple, Protocol, Sequence

import jax
import numpy as np

from distill import predict
from distill.models.t5 import T5Config

SMALLEST_LENGTH_BUCKET = 16


@dataclasses.dataclass(frozen=True, order=True)
class Settings:
    """What rows must share to be decoded in one batch: one compiled program per value (and shape)."""

    method: str = "greedy"  # greedy | sample | beam
    temperature: float = 0.0
    top_p: float = 1.0
    num_beams: int = 1

    def describe(self) -> dict:
        if self.method == "sample":
            return {"method": "sample", "temperature": self.temperature, "top_p": self.top_p}
        if self.method == "beam":
            return {"method": "beam", "num_beams": self.num_beams}
        return {"method": "greedy"}


GREEDY = Settings()


class Generated(NamedTuple):
    """One decoded row: the ids before EOS, and whether EOS came within the decode length."""

    ids: list[int]
    ended: bool


class RowDecoder(Protocol):
    """What the batcher needs from a model (distill/serve/batcher.py); tests pass a fake."""

    max_batch_size: int

    def length_bucket(self, length: int) -> int: ...

    def decode(self, rows: Sequence[Sequence[int]], settings: Settings, rng: tuple[int, ...]) -> list[Generated]: ...


def row_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, 12, 16, 24, 32, ... (powers of two, and 1.5x them from 8) below max_batch_size, then it."""
    buckets = []
    size = 1
    while size < max_batch_size:
        buckets.append(size)
        if size >= 8 and size * 3 // 2 < max_batch_size:
            buckets.append(size * 3 // 2)
        size *= 2
    return buckets + [max_batch_size]


def length_buckets(max_input_tokens: int) -> list[int]:
    """16, 32, 64, ... below max_input_tokens, then max_input_tokens."""
    buckets = []
    size = SMALLEST_LENGTH_BUCKET
    while size < max_input_tokens:
        buckets.append(size)
        size *= 2
    return buckets + [max_input_tokens]


def _round_up(n: int, buckets: list[int]) -> int:
    return next(b for b in buckets if b >= n)


class Decoder:
    """Pads rows to bucket shapes and decodes them with `predict_batch`; remembers which shapes ran.

    Called from one worker thread at a time (the batcher's); the counters are read from the
    event loop under a lock.
    """

    def __init__(self, config: T5Config, params, *, max_batch_size: int, max_input_tokens: int,
                 max_new_tokens: int) -> None:
        self.config = config
        self.params = jax.device_put(predict.decoding_params(config, params))  # once, not on every batch
        self.max_batch_size = max_batch_size
        self.max_new_tokens = max_new_tokens
        self.row_buckets = row_buckets(max_batch_size)
        self.length_buckets = length_buckets(max_input_tokens)
        self.warmed: set[tuple[Settings, int, int]] = set()
        self._batches: collections.Counter[tuple[Settings, int, int]] = collections.Counter()
        self._lock = threading.Lock()

    def length_bucket(self, length: int) -> int:
        """The padded encoder length for an input of `length` tokens (<= max_input_tokens)."""
        return _round_up(length, self.length_buckets)

    def decode(self, rows: Sequence[Sequence[int]], settings: Settings, rng: tuple[int, ...]) -> list[Generated]:
        """Generated ids for each row (token ids ending in EOS, all in one length bucket).

        rows: at most max_batch_size. rng: integers folded into one PRNG key (sampling only).
        """
        shape = (_round_up(len(rows), self.row_buckets), self.length_bucket(max(len(r) for r in rows)))
        eos = self.config.eos_token_id
        batch = np.full(shape, self.config.pad_token_id, np.int32)
        batch[len(rows):, 0] = eos  # filler rows: an empty input
        for index, ids in enumerate(rows):
            batch[index, :len(ids)] = ids
        tokens = np.asarray(self._run(batch, settings, rng))
        with self._lock:
            self._batches[(settings, *shape)] += 1
        results = []
        for row in tokens[:len(rows)].tolist():
            ended = eos in row
            results.append(Generated(row[:row.index(eos)] if ended else row, ended))
        return results

    def _run(self, batch: np.ndarray, settings: Settings, rng: tuple[int, ...]):
        key = jax.random.PRNGKey(rng[0] if rng else 0)
        for value in rng[1:]:
            key = jax.random.fold_in(key, value)
        return predict.predict_batch(
            self.config, self.params, batch, method=settings.method, num_beams=settings.num_beams,
            max_decode_length=self.max_new_tokens, rng=key, temperature=settings.temperature or 1.0,
            top_p=settings.top_p)

    def warm_up(self) -> list[tuple[int, int]]:
        """Compile (and run once) the greedy program of every bucket shape; returns the shapes."""
        shapes = [(rows, length) for length in self.length_buckets for rows in self.row_buckets]
        for rows, length in shapes:
            batch = np.zeros((rows, length), np.int32)
            batch[:, 0] = self.config.eos_token_id
            np.asarray(self._run(batch, GREEDY, ()))
            self.warmed.add((GREEDY, rows, length))
        return shapes

    def programs(self) -> list[dict]:
        """Every (settings, shape) decoded since start-up, with its batch count and whether warm-up compiled it."""
        with self._lock:
            counts = dict(self._batches)
        return [{**key[0].describe(), "rows": key[1], "length": key[2], "batches": counts.get(key, 0),
                 "warmed": key in self.warmed} for key in sorted(set(counts) | self.warmed)]
