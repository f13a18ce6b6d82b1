"""Dynamic batching: rows of concurrent requests decoded together, off the event loop.

A request becomes rows (one per prompt; times n when sampling) and `submit` returns one future per
row. Rows wait in groups keyed by (decoding settings, input-length bucket), since only rows with
the same settings run through one compiled program and a shared length bucket keeps padding low.
A group is decoded when it holds max_batch_size rows; when its oldest row has waited max_wait with
the decoder free (counted from the later of the row's arrival and the end of the last decode: under
load every queued row has waited through a decode, and a batch taken the moment the decoder frees
up is only as large as the requests that happened to arrive meanwhile); when every request the
server holds has rows queued (none is being read or answered, so no more rows can come soon and
waiting would only add latency); or at once when it is private: a seeded sampling request gets a
group of its own, so its draws do not depend on who else happened to be waiting. A batch with room
left takes rows of other length buckets with the same settings, oldest first, and is padded to the
longest of them: under load batches fill up instead of splitting by length (a decode step costs
about the same for a longer encoder input, while a second, smaller batch costs a whole decode).

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
from typing import Callable, Hashable, Sequence

from distill.serve.decoder import Generated, RowDecoder, Settings

RNG_MODULUS = 2 ** 31  # PRNGKey seeds are 32-bit; fold larger request seeds into range


@dataclasses.dataclass
class _Row:
    ids: list[int]
    future: asyncio.Future
    arrived: float
    request: int  # which submit() it came from


@dataclasses.dataclass
class _Group:
    settings: Settings
    length: int
    seed: int | None  # set for a private (seeded) group
    rows: collections.deque = dataclasses.field(default_factory=collections.deque)
    batches: int = 0

    def ready(self, now: float, max_rows: int, max_wait: float, free_since: float) -> bool:
        return self.seed is not None or len(self.rows) >= max_rows or now - self.waited_from(free_since) >= max_wait

    def waited_from(self, free_since: float) -> float:
        return max(self.rows[0].arrived, free_since)

    def takes_riders(self) -> bool:
        return self.seed is None  # a seeded group's draws depend on its own rows only


class Batcher:
    """Collects rows into batches and decodes them with a `RowDecoder` on a worker thread.

    in_flight: how many generation requests the server holds (being read, queued, decoded or
    answered); with it, the batcher stops waiting once all of them have rows queued.
    """

    def __init__(self, decoder: RowDecoder, *, max_wait_s: float, in_flight: Callable[[], int] | None = None) -> None:
        self._decoder = decoder
        self._max_rows = decoder.max_batch_size
        self._max_wait = max_wait_s
        self._in_flight = in_flight
        self._request_ids = itertools.count()
        self._free_since = 0.0  # loop time the last decode ended
        self._queued_per_request: collections.Counter[int] = collections.Counter()
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
        self._queued_per_request.clear()
        self._executor.shutdown(wait=True)

    def submit(self, rows: Sequence[list[int]], settings: Settings, *, seed: int | None = None) -> list[asyncio.Future]:
        """Queue rows (token ids ending in EOS); futures of `Generated`, in order.

        seed: decode these rows in a private group with PRNG keys derived from it alone.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        private = None if seed is None else next(self._private_ids)
        request = next(self._request_ids)
        futures = []
        for ids in rows:
            length = self._decoder.length_bucket(len(ids))
            key = (settings, length, private)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(settings, length, None if seed is None else seed % RNG_MODULUS)
            future = loop.create_future()
            group.rows.append(_Row(list(ids), future, now, request))
            futures.append(future)
            self._queued_per_request[request] += 1
        self._wakeup.set()
        return futures

    def queued_rows(self) -> int:
        return sum(len(group.rows) for group in self._groups.values())

    def _all_requests_queued(self) -> bool:
        return self._in_flight is not None and self._in_flight() <= len(self._queued_per_request)

    def _take(self, key: Hashable, count: int) -> list[_Row]:
        """The first `count` rows of a group, off the queue (the group goes when empty)."""
        group = self._groups[key]
        taken = [group.rows.popleft() for _ in range(min(count, len(group.rows)))]
        if not group.rows:
            del self._groups[key]
        for row in taken:
            self._queued_per_request[row.request] -= 1
            if not self._queued_per_request[row.request]:
                del self._queued_per_request[row.request]
        return taken

    def _next_ready(self, now: float) -> tuple[Hashable, _Group] | None:
        max_wait = 0.0 if self._all_requests_queued() else self._max_wait
        ready = [(group.rows[0].arrived, key) for key, group in self._groups.items()
                 if group.ready(now, self._max_rows, max_wait, self._free_since)]
        if not ready:
            return None
        key = min(ready, key=lambda item: item[0])[1]
        return key, self._groups[key]

    def _seconds_to_next(self, now: float) -> float | None:
        if not self._groups:
            return None
        return max(0.0, min(g.waited_from(self._free_since) for g in self._groups.values()) + self._max_wait - now)

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
            taken = self._take(key, self._max_rows)
            if len(taken) < self._max_rows and group.takes_riders():
                taken += self._riders(group, self._max_rows - len(taken))
            live = [row for row in taken if not row.future.done()]  # a disconnected client's rows are dropped
            if live:
                await self._decode(loop, group, live)
                self._free_since = loop.time()
            group.batches += 1

    def _riders(self, batch: _Group, room: int) -> list[_Row]:
        """Up to `room` rows of other buckets with the batch's settings, oldest first, taken off their groups."""
        donors = sorted(((group.rows[0].arrived, key) for key, group in self._groups.items()
                         if group.settings == batch.settings and group.takes_riders()),
                        key=lambda item: item[0])
        riders: list[_Row] = []
        for _, key in donors:
            riders += self._take(key, room - len(riders))
        return riders

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
