"""Crash-safe SQLite cache of teacher completions: the run's only state.

Why SQLite in WAL mode: each completion is committed in its own small
transaction the moment it arrives, a `kill -9` at any instant leaves either
the whole row or nothing, and readers never block the writer. A rerun of the
same command looks every prompt up here first, so nothing already paid for is
requested again, and `INSERT OR IGNORE` on the key means nothing is stored twice.

The key is the sha256 of (backend kind, model, rendered prompt, sampling
parameters) — never the API key or the base URL — so the same prompt sent to
the same model with the same settings is one row whichever server answers it.
Failures live in their own table: they are reported and exported, and a rerun
tries them again.

Accounting: every run gets a row in `runs` (its backend: "openai-batch" runs
are billed at the batch discount), and every completion remembers the run
that stored it, so tokens per run and in total are queries, not counters that
a kill could lose. Caches written before these existed are migrated on open
(CREATE TABLE IF NOT EXISTS, ALTER TABLE ADD COLUMN); their old rows count
for no run and are billed at the online price. The Batch API's state lives
in tables of its own (distill/teacher/batch_store.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from typing import Any

from distill.errors import UserError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    texts TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    started REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class Completion:
    """One prompt's answer as backends return it and the cache stores it.

    `texts` has one raw completion per sample (n); token counts are what the
    server reported (None when it did not).
    """

    texts: tuple[str, ...]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def redacted(self, secret: str | None) -> "Completion":
        """The same answer with the key taken out of its texts (a server may echo it back)."""
        from distill.teacher.redaction import redact

        return dataclasses.replace(self, texts=tuple(redact(t, secret) for t in self.texts)) if secret else self


def cache_key(*, backend: str, model: str, prompt: Any, params: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of what determines the answer.

    `prompt` is the rendered prompt: a string (completion rendering) or a list
    of chat messages. `params` are the sampling parameters (temperature,
    top_p, max_tokens, n, stop, ...). Secrets are never passed in.
    """
    payload = json.dumps(
        {"backend": backend, "model": model, "prompt": prompt, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CompletionCache:
    """The SQLite file through one connection, used by one thread at a time (the event loop's)."""

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False)
            # WAL: a kill -9 mid-commit leaves the last committed state; NORMAL
            # sync is durable against process death (not power loss) and keeps
            # a commit well under a millisecond (scripts/bench_teacher.py).
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(completions)")}
            foreign = {"key", "texts", "prompt_tokens", "completion_tokens", "created"} - columns
            if foreign:
                raise UserError(f"teacher cache {path!r} holds a 'completions' table of another schema (no "
                                f"{', '.join(sorted(foreign))}); it was not written by `distill teacher`: pass "
                                "another --cache path (the file is left as it is)")
            if "run_id" not in columns:  # a cache from before per-run accounting
                with self._db:
                    self._db.execute("ALTER TABLE completions ADD COLUMN run_id INTEGER")
        except sqlite3.DatabaseError as err:
            raise UserError(f"teacher cache {path!r} cannot be opened as SQLite ({err}); "
                            "pass another --cache path") from err
        self.run_id: int | None = None  # stamped on every completion stored by this run

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for modules that keep their own tables in this file (batch_store)."""
        return self._db

    def start_run(self, backend: str, model: str) -> int:
        """Register this run; completions stored from now on count for it."""
        with self._db:
            cursor = self._db.execute("INSERT INTO runs (backend, model, started) VALUES (?, ?, ?)",
                                      (backend, model, time.time()))
        self.run_id = int(cursor.lastrowid)
        return self.run_id

    def get(self, key: str) -> Completion | None:
        row = self._db.execute(
            "SELECT texts, prompt_tokens, completion_tokens FROM completions WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return Completion(tuple(json.loads(row[0])), row[1], row[2])

    def keys_present(self, keys: list[str]) -> set[str]:
        """The subset of `keys` already answered (batched lookups for big runs)."""
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._db.execute(f"SELECT key FROM completions WHERE key IN ({marks})", chunk))
        return found

    def put(self, key: str, completion: Completion) -> None:
        """Store one answer and commit; a second put of the same key is a no-op."""
        self.put_many([(key, completion)])

    def put_many(self, items: list[tuple[str, Completion]]) -> None:
        """Store answers in one transaction (one per request, or a local backend's batch)."""
        with self._db:  # committed on exit
            for key, completion in items:
                self.insert(key, completion)

    def insert(self, key: str, completion: Completion) -> None:
        """Store one answer inside the caller's transaction (`with cache.db:`); no commit."""
        self._db.execute(
            "INSERT OR IGNORE INTO completions (key, texts, prompt_tokens, completion_tokens, created, run_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, json.dumps(list(completion.texts), ensure_ascii=False),
             completion.prompt_tokens, completion.completion_tokens, time.time(), self.run_id),
        )
        self._db.execute("DELETE FROM failures WHERE key = ?", (key,))

    def put_failure(self, key: str, error: str, attempts: int) -> None:
        """Record that a prompt kept failing (the error must already be redacted)."""
        with self._db:
            self.insert_failure(key, error, attempts)

    def insert_failure(self, key: str, error: str, attempts: int) -> None:
        """Record a failure inside the caller's transaction, unless the prompt is answered already."""
        self._db.execute(
            "INSERT OR REPLACE INTO failures (key, error, attempts, created)"
            " SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM completions WHERE key = ?)",
            (key, error, attempts, time.time(), key),
        )

    def failure(self, key: str) -> str | None:
        row = self._db.execute("SELECT error FROM failures WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def usage(self, keys: list[str], *, run_id: int | None = None) -> dict[str, tuple[int, int, int]]:
        """{backend of the storing run: (answers, prompt tokens, completion tokens)} over distinct `keys`.

        With `run_id`, only the answers that run stored. Rows from before
        accounting have backend "" (no run).
        """
        totals: dict[str, list[int]] = {}
        distinct = list(dict.fromkeys(keys))
        run_filter = "" if run_id is None else " AND c.run_id = ?"
        for start in range(0, len(distinct), 500):
            chunk = distinct[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT COALESCE(r.backend, ''), COUNT(*), COALESCE(SUM(c.prompt_tokens), 0),"
                " COALESCE(SUM(c.completion_tokens), 0) FROM completions c LEFT JOIN runs r ON c.run_id = r.id"
                f" WHERE c.key IN ({marks}){run_filter} GROUP BY 1",
                [*chunk, *([] if run_id is None else [run_id])])
            for backend, answers, prompt_tokens, completion_tokens in rows:
                entry = totals.setdefault(backend, [0, 0, 0])
                entry[0] += answers
                entry[1] += prompt_tokens
                entry[2] += completion_tokens
        return {backend: (a, p, c) for backend, (a, p, c) in totals.items()}

    def failure_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM failures").fetchone()[0])

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    def close(self) -> None:
        self._db.close()
