"""`distill teacher status --cache PATH`: the batches a cache holds and how far its prompts are.

Reads the cache only (no server, no API key): one line per batch with the
state it had at its last poll, then the answered / failed / pending counts
(pending: requests in batches not merged yet that have no result). Safe to
run while `distill teacher` is polling (SQLite WAL readers never block).
"""
from __future__ import annotations

import argparse
import os
import time

from distill.errors import UserError
from distill.teacher.batch_store import BatchStore
from distill.teacher.cache import CompletionCache


def status_lines(cache_path: str) -> list[str]:
    if not os.path.isfile(cache_path):
        raise UserError(f"teacher cache {cache_path} not found; pass the --cache of your run "
                        "(default <out>/teacher_cache.sqlite)")
    cache = CompletionCache(cache_path)
    try:
        store = BatchStore(cache)
        lines = []
        for row in store.rows():
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created))
            lines.append(f"{row.batch_id or '(not created)'}  {row.status:<11}  {row.requests} requests "
                         f"({row.completed} completed, {row.failed} failed)  input {row.input_file_id}  "
                         f"{'merged' if row.merged else 'not merged'}  created {created}")
        if not lines:
            lines.append("no batches")
        lines.append(f"answered: {cache.count()}  failed: {cache.failure_count()}  pending: {store.pending_count()}")
        return lines
    finally:
        cache.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distill teacher status", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="the run's SQLite cache (default of a run: <out>/teacher_cache.sqlite)")
    args = parser.parse_args(argv)
    print("\n".join(status_lines(args.cache)))
    return 0
