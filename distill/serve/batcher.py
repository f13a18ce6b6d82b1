"""Dynamic batching: rows of concurrent requests decoded together, off the event loop.

A request becomes rows (one per prompt; times n when sampling) and `submit` returns one future per
row. Rows wait in groups keyed by (decoding settings, input-length bucket), since only rows with
the same settings run through one compiled program and a shared length bucket keeps padding low.
A group is decoded when it holds max_batch_size rows, when its oldest row has waited max_wait, or
at once when it is private: a seeded sampling request gets a group of its own, so its draws do not
depend on who else happened to be waiting.

Decoding runs on one worker thread (one accelerator runs one program at a time; jax releases the
GIL while it runs), so the event loop keeps reading requests and answering /health meanwhile, and
the rows that arrive during a decode are the next batch: under load batches fill up by themselves.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import itertools
import secrets
import time
from typing import Hashable, Sequence

from distill.serve.decoder import Generated, RowDecoder, Settings

RNG_MODULUS = 2 ** 31  # PRNGKey seeds are 32-bit; fold larger request seeds into range


@dataclasses.dataclass
class _Row:
    ids: list[int]
    future: asyncio.Future
    arrived: float


@dataclasses.dataclass
class _Group:
    settings: Settings
    length: int
    seed: int | None  # set for a private (seeded) group
    rows: collections.deque = dataclasses.field(default_factory=collections.deque)
    batches: int = 0

    def ready(self, now: float, max_rows: int, max_wait: float) -> bool:
        return self.seed is not None or len(self.rows) >= max_rows or now - self.rows[0].arrived >= max_wait


class Batcher:
    """Collects rows into batches and decodes them with a `RowDecoder` on a worker thread."""

    def __init__(self, decoder: RowDecoder, *, max_wait_s: float) -> None:
        self._decoder = decoder
        self._max_rows = decoder.max_batch_size
        self._max_wait = max_wait_s
        self._groups: dict[Hashable, _Group] = {}
        self._private_ids = itertools.count()
        self._batch_seeds = itertools.count(secrets.randbelow(RNG_MODULUS))  # unseeded sampling
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="distill-serve-decode")
        self._task: asyncio.Task | None = None
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.rows_decoded = 0
        self.decode_seconds = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop taking batches; rows still queued are cancelled (the server drained requests before)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for group in self._groups.values():
            for row in group.rows:
                row.future.cancel()
        self._groups.clear()
        self._executor.shutdown(wait=True)

    def submit(self, rows: Sequence[list[int]], settings: Settings, *, seed: int | None = None) -> list[asyncio.Future]:
        """Queue rows (token ids ending in EOS); futures of `Generated`, in order.

        seed: decode these rows in a private group with PRNG keys derived from it alone.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        private = None if seed is None else next(self._private_ids)
        futures = []
        for ids in rows:
            length = self._decoder.length_bucket(len(ids))
            key = (settings, length, private)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(settings, length, None if seed is None else seed % RNG_MODULUS)
            future = loop.create_future()
            group.rows.append(_Row(list(ids), future, now))
            futures.append(future)
        self._wakeup.set()
        return futures

    def queued_rows(self) -> int:
        return sum(len(group.rows) for group in self._groups.values())

    def _next_ready(self, now: float) -> tuple[Hashable, _Group] | None:
        ready = [(group.rows[0].arrived, key) for key, group in self._groups.items()
                 if group.ready(now, self._max_rows, self._max_wait)]
        if not ready:
            return None
        key = min(ready, key=lambda item: item[0])[1]
        return key, self._groups[key]

    def _seconds_to_next(self, now: float) -> float | None:
        if not self._groups:
            return None
        return max(0.0, min(g.rows[0].arrived for g in self._groups.values()) + self._max_wait - now)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            found = self._next_ready(loop.time())
            if found is None:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self._seconds_to_next(loop.time()))
                except TimeoutError:
                    pass
                continue
            key, group = found
            taken = [group.rows.popleft() for _ in range(min(self._max_rows, len(group.rows)))]
            if not group.rows:
                del self._groups[key]
            live = [row for row in taken if not row.future.done()]  # a disconnected client's rows are dropped
            if live:
                await self._decode(loop, group, live)
            group.batches += 1

    async def _decode(self, loop: asyncio.AbstractEventLoop, group: _Group, rows: list[_Row]) -> None:
        if group.settings.method != "sample":
            rng: tuple[int, ...] = ()
        elif group.seed is not None:
            rng = (group.seed, group.length, group.batches)
        else:
            rng = (next(self._batch_seeds) % RNG_MODULUS,)
        started = time.perf_counter()
        try:
            results: list[Generated] = await loop.run_in_executor(
                self._executor, self._decoder.decode, [row.ids for row in rows], group.settings, rng)
        except asyncio.CancelledError:  # stop() during a decode
            for row in rows:
                row.future.cancel()
            raise
        except Exception as err:  # the requests answer 500; the batcher goes on
            for row in rows:
                if not row.future.done():
                    row.future.set_exception(err)
            return
        finally:
            self.decode_seconds += time.perf_counter() - started
        self.batch_sizes[len(rows)] += 1
        self.rows_decoded += len(rows)
        for row, result in zip(rows, results):
            if not row.future.done():
                row.future.set_result(result)

    def stats(self) -> dict:
        return {"batches": sum(self.batch_sizes.values()), "rows": self.rows_decoded,
                "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
                "queued_rows": self.queued_rows(), "decode_seconds": round(self.decode_seconds, 3)}
