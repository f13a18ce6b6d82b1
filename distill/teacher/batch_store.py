"""The Batch API's state, in the teacher cache's SQLite file: what was submitted, and where it stands.

Why in the cache: a batch takes up to 24 hours, and a run may be killed at
any moment while it waits. Every step is committed before the next one
starts, so a rerun of the same command finds the batches it created and
polls them instead of paying for the same requests twice:

1. an input file is uploaded, then recorded here with the keys of its
   requests (`record_file`, one transaction);
2. the batch is created, then its id recorded on that row (`set_batch`). If
   a kill falls between the two, the rerun finds the row without a batch id
   and looks the batch up by its input file id before creating one;
3. each poll stores the batch's status and request counts (`update`);
4. its output and error files are merged into the completions and failures
   tables in the same transaction that marks the row merged (`merged`), so a
   kill mid-merge merges again (INSERT OR IGNORE) and never half.

Tables are created with CREATE TABLE IF NOT EXISTS, so caches from before
batch mode open unchanged.
"""
from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterable

from distill.teacher.cache import CompletionCache

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    input_file_id TEXT PRIMARY KEY,
    batch_id TEXT,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    requests INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    output_file_id TEXT,
    error_file_id TEXT,
    merged INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_requests (
    input_file_id TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (input_file_id, key)
);
CREATE INDEX IF NOT EXISTS batch_requests_by_key ON batch_requests (key);
"""

# Statuses after which a batch changes no more (OpenAI's batch object).
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclasses.dataclass(frozen=True)
class BatchRow:
    input_file_id: str
    batch_id: str | None
    endpoint: str
    status: str  # "uploaded" before the batch exists, then the API's status
    requests: int
    completed: int
    failed: int
    output_file_id: str | None
    error_file_id: str | None
    merged: bool
    created: float


_COLUMNS = ("input_file_id, batch_id, endpoint, status, requests, completed, failed, output_file_id,"
            " error_file_id, merged, created")


class BatchStore:
    """Batch bookkeeping on the cache's connection (one thread, like the cache)."""

    def __init__(self, cache: CompletionCache) -> None:
        self.cache = cache
        self._db: sqlite3.Connection = cache.db
        self._db.executescript(_SCHEMA)

    def record_file(self, input_file_id: str, endpoint: str, keys: list[str]) -> None:
        """An uploaded input file and the requests in it, committed before any batch is created."""
        now = time.time()
        with self._db:
            self._db.execute("INSERT INTO batches (input_file_id, endpoint, status, requests, created, updated)"
                             " VALUES (?, ?, 'uploaded', ?, ?, ?)", (input_file_id, endpoint, len(keys), now, now))
            self._db.executemany("INSERT OR IGNORE INTO batch_requests (input_file_id, key) VALUES (?, ?)",
                                 ((input_file_id, key) for key in keys))

    def set_batch(self, input_file_id: str, batch: dict) -> None:
        with self._db:
            self._db.execute("UPDATE batches SET batch_id = ? WHERE input_file_id = ?", (batch["id"], input_file_id))
        self.update(input_file_id, batch)

    def update(self, input_file_id: str, batch: dict) -> None:
        """Store a polled batch object's status, request counts and file ids."""
        counts = batch.get("request_counts") or {}
        with self._db:
            self._db.execute(
                "UPDATE batches SET status = ?, completed = ?, failed = ?, output_file_id = ?, error_file_id = ?,"
                " updated = ? WHERE input_file_id = ?",
                (str(batch.get("status")), int(counts.get("completed") or 0), int(counts.get("failed") or 0),
                 batch.get("output_file_id"), batch.get("error_file_id"), time.time(), input_file_id))

    def mark_merged(self, input_file_id: str) -> None:
        """Inside the merge's transaction (the caller commits)."""
        self._db.execute("UPDATE batches SET merged = 1, updated = ? WHERE input_file_id = ?",
                         (time.time(), input_file_id))

    def rows(self) -> list[BatchRow]:
        """Every batch of this cache, oldest first."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM batches ORDER BY created, input_file_id").fetchall()
        return [BatchRow(*row[:9], bool(row[9]), row[10]) for row in rows]

    def row(self, input_file_id: str) -> BatchRow:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM batches WHERE input_file_id = ?", (input_file_id,)).fetchone()
        return BatchRow(*row[:9], bool(row[9]), row[10])

    def keys(self, input_file_id: str) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT key FROM batch_requests WHERE input_file_id = ?"
                                               " ORDER BY rowid", (input_file_id,))]

    def unmerged_covering(self, keys: Iterable[str]) -> dict[str, set[str]]:
        """{input file id: the given keys it holds} for the batches not merged yet."""
        keys = list(keys)
        found: dict[str, set[str]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for file_id, key in self._db.execute(
                    "SELECT r.input_file_id, r.key FROM batch_requests r JOIN batches b USING (input_file_id)"
                    f" WHERE b.merged = 0 AND r.key IN ({marks})", chunk):
                found.setdefault(file_id, set()).add(key)
        return found

    def pending_count(self) -> int:
        """Requests in batches not merged yet that have neither an answer nor a failure."""
        return int(self._db.execute(
            "SELECT COUNT(DISTINCT r.key) FROM batch_requests r JOIN batches b USING (input_file_id)"
            " WHERE b.merged = 0 AND r.key NOT IN (SELECT key FROM completions)"
            " AND r.key NOT IN (SELECT key FROM failures)").fetchone()[0])
