"""The training feed: the SeqIO pipeline's batches, written once by a child process, read back without TensorFlow.

TensorFlow and seqio hold about 1 GB of a training process's memory and run
tf.data threads on the cores the train step needs. With `TRAIN_FEED =
'process'` (the default), `distill train` instead starts this module as a
child (`python -m distill.train_feed REQUEST`), which registers the tasks,
runs `distill.input_pipeline.numpy_batches` for the batches the run will
take (up to AHEAD_BATCHES) and the evaluation splits, writes them, and exits
before training starts; meanwhile the training process builds its state and
compiles its train step (`prepare`'s `while_writing`), so the child's ~10 s of
TensorFlow start-up and pipeline overlap the ~15 s of compilation on a 2-core
machine. The training process reads numpy files only. A
run longer than AHEAD_BATCHES writes the rest in windows as it goes, each as
long as what it has trained (training pauses while the child writes). The batches are the
pipeline's own, in its order, so data order, examples per step and exact
resume are those of `TRAIN_FEED = 'inline'` (tests/test_train_feed.py).

    <feed dir>/<key>/batches/<first>.npz   CHUNK_BATCHES consecutive batches (the last may hold fewer),
                                           compressed, int16 where the values fit
    <feed dir>/<key>/eval/<task>.<split>.<count>.jsonl   {"input", "input_ids", "target"} per example
    <feed dir>/<key>/writer.log            the child's output (read back when it fails)

`<key>` hashes the data spec, the task source (task prefixes included) and the size and mtime of the
data, TFDS and vocabulary files, so a changed input is written anew; a
resumed or extended run writes only the chunks it lacks. Every file appears
atomically (distill/atomic.py), so a killed writer leaves whole chunks; the
folder is a cache and may be deleted at any time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from distill.atomic import write_atomically
from distill.errors import UserError
from distill.input_pipeline import EvalExample, TrainDataSpec, data_state
from distill.jsonl import jsonl_line, read_jsonl
from distill.task_prefixes import TASK_PREFIXES

CHUNK_BATCHES = 64
# Batches written before training starts; a longer run writes the rest in windows as large as what
# it has trained, so skipping to a window's start (the pipeline re-reads what it skips) costs O(run).
AHEAD_BATCHES = 50_000
FEEDS = ("process", "inline")
Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class FeedSource:
    """What the child needs to register the tasks (distill.tasks.register_tasks' arguments)."""

    dataset: str
    data_dir: str
    vocabulary_path: str
    train_fraction: float = 1.0
    tfds_dir: str | None = None
    label_prefix: str = TASK_PREFIXES["label"]
    rationale_prefix: str = TASK_PREFIXES["rationale"]


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """One evaluation split to write: `task`'s `split`, its first `max_examples` (None = all)."""

    task: str
    split: str
    max_examples: int | None = None

    @property
    def file_name(self) -> str:
        return f"{self.task}.{self.split}.{'all' if self.max_examples is None else self.max_examples}.jsonl"


class TrainFeed:
    """One run's feed folder: `prepare` writes what is missing, then `batches` and `eval_examples` read it."""

    def __init__(self, root: str, spec: TrainDataSpec, source: FeedSource, *,
                 chunk_batches: int = CHUNK_BATCHES) -> None:
        self.spec, self.source, self.chunk_batches = spec, source, chunk_batches
        identity = {"spec": spec.to_json(), "source": dataclasses.asdict(source), "files": _fingerprint(source),
                    "chunk_batches": chunk_batches}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = os.path.join(root, key)
        self.writer_peak_rss_gb: float | None = None  # set when `prepare` ran the writer

    def prepare(self, start: int, stop: int, evals: Sequence[EvalRequest] = (), *,
                while_writing: Callable[[], Result] | None = None) -> Result | None:
        """Makes batches [start, stop) and the evaluation files exist, running the writer child for what is missing.

        `while_writing` (if given) runs in this process while the child writes, or at once when
        nothing is missing (`distill train` builds its state and compiles its train step
        meanwhile); its result is returned. If it raises, the child is stopped (its files appear
        whole or not at all) and the error propagates.
        """
        first = self._first_missing_chunk(start, stop)
        missing_evals = [e for e in evals if not os.path.isfile(self._eval_path(e))]
        if first is None and not missing_evals:
            return None if while_writing is None else while_writing()
        start = stop if first is None else first * self.chunk_batches
        request = {"spec": self.spec.to_json(), "source": dataclasses.asdict(self.source), "start": start,
                   "stop": stop, "chunk_batches": self.chunk_batches, "evals": [dataclasses.asdict(e) for e in missing_evals], "dir": self.dir}
        os.makedirs(self.dir, exist_ok=True)
        request_path = os.path.join(self.dir, "request.json")
        write_atomically(request_path, json.dumps(request, indent=1))
        log_path = os.path.join(self.dir, "writer.log")
        what = f"batches {start}-{stop - 1}" if start < stop else "no batches"
        print(f"training feed: writing {what} and {len(missing_evals)} evaluation splits into {self.dir}",
              flush=True)
        began = time.perf_counter()
        with open(log_path, "wb") as log:
            child = subprocess.Popen([sys.executable, "-m", "distill.train_feed", request_path],
                                     stdout=log, stderr=subprocess.STDOUT)
            try:
                result = None if while_writing is None else while_writing()
            except BaseException:
                child.kill()
                child.wait()
                raise
            code = child.wait()
        self.writer_peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if code != 0:
            raise UserError(_writer_failure(code, log_path))
        print(f"training feed: written in {time.perf_counter() - began:.1f} s (writer peak RSS "
              f"{self.writer_peak_rss_gb:.2f} GB, exited before training starts)", flush=True)
        return result

    def batches(self, position: int = 0, *, stop: int | None = None) -> "FeedBatches":
        """Batches from `position`; with `stop` (the run's last batch), missing ones are written on the way."""
        return FeedBatches(self, position, stop)

    def eval_examples(self, task: str, split: str, *, max_examples: int | None = None) -> list[EvalExample]:
        """The examples `prepare` wrote for EvalRequest(task, split, max_examples)."""
        path = self._eval_path(EvalRequest(task, split, max_examples))
        return [EvalExample(input=r["input"], input_ids=tuple(r["input_ids"]), target=r["target"])
                for _, r in read_jsonl(path, hint="delete the feed folder and relaunch")]

    def read_chunk(self, index: int) -> list[dict[str, np.ndarray]]:
        """Chunk `index`'s batches, int32 as the pipeline made them; UserError naming an unreadable file."""
        path = self._chunk_path(index)
        try:
            with np.load(path, allow_pickle=False) as data:
                count = int(data["count"])
                batches: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
                for name in data.files:
                    if name != "count":
                        row, feature = name.split(".", 1)
                        batches[int(row[1:])][feature] = data[name].astype(np.int32)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"training feed file {path} is unreadable ({err}); delete {self.dir} and relaunch") from None
        return batches

    def has_chunk(self, index: int, stop: int) -> bool:
        """Whether chunk `index` holds all its batches of a run that ends at batch `stop`."""
        needed = min(self.chunk_batches, stop - index * self.chunk_batches)
        return _chunk_count(self._chunk_path(index)) >= needed

    def _first_missing_chunk(self, start: int, stop: int) -> int | None:
        chunks = range(start // self.chunk_batches, -(-stop // self.chunk_batches))
        return next((index for index in chunks if not self.has_chunk(index, stop)), None)

    def _chunk_path(self, index: int) -> str:
        return os.path.join(self.dir, "batches", f"{index * self.chunk_batches:09d}.npz")

    def _eval_path(self, request: EvalRequest) -> str:
        return os.path.join(self.dir, "eval", request.file_name)


class FeedBatches(Iterator[dict[str, np.ndarray]]):
    """The feed's batches from `position` on; `state()` is distill.input_pipeline.TrainData's."""

    def __init__(self, feed: TrainFeed, position: int, stop: int | None) -> None:
        self.feed, self.spec, self.position, self.stop = feed, feed.spec, position, stop
        self._chunk_index, self._chunk = -1, []

    def __next__(self) -> dict[str, np.ndarray]:
        index, offset = divmod(self.position, self.feed.chunk_batches)
        if index != self._chunk_index and self.stop is not None and not self.feed.has_chunk(index, self.stop):
            self.feed.prepare(self.position, min(self.stop, self.position + max(AHEAD_BATCHES, self.position)))
        if index != self._chunk_index:
            self._chunk_index, self._chunk = index, self.feed.read_chunk(index)
        if offset >= len(self._chunk):
            raise UserError(f"the training feed in {self.feed.dir} ends before batch {self.position}; "
                            "delete that folder and relaunch")
        self.position += 1
        return self._chunk[offset]

    def state(self) -> dict[str, Any]:
        return data_state(self.spec, self.position)


def _chunk_count(path: str) -> int:
    """Batches in a chunk file (0 when absent or unreadable: it is written again)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["count"])
    except (OSError, ValueError, KeyError):
        return 0


def _fingerprint(source: FeedSource) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file the child reads, so changed inputs give a new feed key."""
    from distill.data.readers import dataset_dir

    roots = [dataset_dir(source.dataset, source.data_dir), source.vocabulary_path]
    if source.tfds_dir:
        roots.append(source.tfds_dir)
    found = []
    for root in roots:
        if "://" in root:
            continue
        paths = [root] if os.path.isfile(root) else [os.path.join(folder, name) for folder, _, names in os.walk(root)
                                                      for name in names]
        for path in sorted(paths):
            stat = os.stat(path)
            found.append((path, stat.st_size, stat.st_mtime_ns))
    return found


def _writer_failure(code: int, log_path: str) -> str:
    """The child's own `error:` line, else its exit code and the last lines of its log."""
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][len("error: "):]
    tail = " | ".join(lines[-3:])
    return f"the training feed writer exited with {code} (log: {log_path}): {tail}"


def _compact(array: np.ndarray) -> np.ndarray:
    """int16 when every value fits (token ids of vocabularies up to 32k, positions, segments), else int32."""
    info = np.iinfo(np.int16)
    if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
        return array.astype(np.int16)
    return array


# ----------------------------------------------------------------------------
# The child: python -m distill.train_feed REQUEST (imports seqio and TensorFlow)
# ----------------------------------------------------------------------------


def write_feed(request: dict[str, Any]) -> None:
    """Registers the tasks and writes the requested evaluation splits and batches [start, stop)."""
    from distill import input_pipeline
    from distill.jsonl import write_jsonl
    from distill.tasks import register_tasks

    source = FeedSource(**request["source"])
    data = dict(request["spec"])
    data["task_feature_lengths"] = tuple(sorted(data["task_feature_lengths"].items()))
    spec = TrainDataSpec(**data)
    register_tasks(dataset=source.dataset, data_dir=source.data_dir, vocabulary=source.vocabulary_path,
                   train_fraction=source.train_fraction, tfds_dir=source.tfds_dir, label_prefix=source.label_prefix,
                   rationale_prefix=source.rationale_prefix)
    feed_dir = request["dir"]
    for item in request["evals"]:
        wanted = EvalRequest(**item)
        examples = input_pipeline.eval_examples(wanted.task, wanted.split, max_examples=wanted.max_examples)
        write_jsonl(os.path.join(feed_dir, "eval", wanted.file_name),
                    ({"input": e.input, "input_ids": list(e.input_ids), "target": e.target} for e in examples))
    start, stop, chunk = request["start"], request["stop"], request["chunk_batches"]
    if start >= stop:
        return
    batches = input_pipeline.numpy_batches(spec, skip=start)
    for first in range(start, stop, chunk):
        count = min(chunk, stop - first)
        arrays: dict[str, np.ndarray] = {"count": np.asarray(count)}
        for row in range(count):
            for feature, value in next(batches).items():
                arrays[f"b{row}.{feature}"] = _compact(value)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # mostly padding and small ids
        write_atomically(os.path.join(feed_dir, "batches", f"{first:09d}.npz"), buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m distill.train_feed REQUEST.json (written by distill train)", file=sys.stderr)
        return 2
    try:
        with open(argv[0], encoding="utf-8") as handle:
            write_feed(json.loads(handle.read()))
    except UserError as err:
        print(f"error: {err}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
