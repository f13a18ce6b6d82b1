"""The SQLite cache: keys, idempotent puts, failures, WAL mode, bad files."""
import sqlite3

import pytest

from distill.errors import UserError
from distill.teacher.cache import Completion, CompletionCache, cache_key


def _key(**overrides):
    args = dict(backend="openai", model="m", prompt="Q: x\nA:", params={"temperature": 0.0, "n": 1})
    args.update(overrides)
    return cache_key(**args)


def test_key_depends_on_backend_model_prompt_and_params_only():
    base = _key()
    assert base == _key() and len(base) == 64
    assert base != _key(backend="hf")
    assert base != _key(model="m2")
    assert base != _key(prompt="Q: y\nA:")
    assert base != _key(params={"temperature": 0.7, "n": 1})
    assert base != _key(prompt=[{"role": "user", "content": "Q: x\nA:"}])
    assert _key(params={"n": 1, "temperature": 0.0}) == base  # canonical JSON: order does not matter


def test_put_get_is_idempotent_and_success_clears_failure(tmp_path):
    cache = CompletionCache(str(tmp_path / "c.sqlite"))
    cache.put_failure("k", "HTTP 500", attempts=6)
    assert cache.failure("k") == "HTTP 500" and cache.get("k") is None
    cache.put("k", Completion(("first",), 10, 2))
    cache.put("k", Completion(("second",), 10, 2))  # a duplicate answer never replaces the stored one
    assert cache.get("k") == Completion(("first",), 10, 2)
    assert cache.failure("k") is None
    assert cache.keys_present(["k", "other"]) == {"k"}
    cache.close()
    reopened = CompletionCache(str(tmp_path / "c.sqlite"))
    assert reopened.count() == 1 and reopened.get("k").texts == ("first",)
    mode = sqlite3.connect(str(tmp_path / "c.sqlite")).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_keys_present_handles_many_keys(tmp_path):
    cache = CompletionCache(str(tmp_path / "c.sqlite"))
    cache.put_many([(f"k{i}", Completion((str(i),))) for i in range(1200)])
    assert cache.keys_present([f"k{i}" for i in range(0, 2400, 2)]) == {f"k{i}" for i in range(0, 1200, 2)}


def test_a_file_that_is_not_sqlite_is_a_user_error(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="cannot be opened as SQLite"):
        CompletionCache(str(path))


def test_a_cache_from_before_accounting_and_batches_opens_and_migrates(tmp_path):
    path = str(tmp_path / "old.sqlite")
    with sqlite3.connect(path) as db:  # the schema as it was before run_id, runs and batch tables
        db.executescript("""
            CREATE TABLE completions (key TEXT PRIMARY KEY, texts TEXT NOT NULL, prompt_tokens INTEGER,
                                      completion_tokens INTEGER, created REAL NOT NULL);
            CREATE TABLE failures (key TEXT PRIMARY KEY, error TEXT NOT NULL, attempts INTEGER NOT NULL,
                                   created REAL NOT NULL);
            INSERT INTO completions VALUES ('old', '["an old answer"]', 100, 20, 0);
        """)
    from distill.teacher.batch_store import BatchStore

    cache = CompletionCache(path)
    assert cache.get("old") == Completion(("an old answer",), 100, 20)
    store = BatchStore(cache)
    assert store.rows() == [] and store.pending_count() == 0
    run = cache.start_run("openai-batch", "m")
    cache.put("new", Completion(("a new answer",), 7, 3))
    assert cache.usage(["old", "new", "absent"]) == {"": (1, 100, 20), "openai-batch": (1, 7, 3)}
    assert cache.usage(["old", "new"], run_id=run) == {"openai-batch": (1, 7, 3)}
    cache.close()
    reopened = CompletionCache(path)  # a second open migrates nothing twice
    assert reopened.count() == 2


def test_a_sqlite_file_of_another_schema_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE completions (x INTEGER)")
        db.execute("INSERT INTO completions VALUES (42)")
    with pytest.raises(UserError, match="of another schema .*not written by `distill teacher`"):
        CompletionCache(str(path))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT x FROM completions").fetchall() == [(42,)]
