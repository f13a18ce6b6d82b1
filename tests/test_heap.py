"""distill/heap.py on this machine's glibc: the arena cap holds while threads allocate, a user's
MALLOC_ARENA_MAX wins, and trimming runs. Each case is a fresh interpreter (arenas are per process).
"""
import ctypes.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""),
                                reason="glibc malloc only")

# Eight live threads each malloc; glibc's malloc_stats() then prints one "Arena N:" block per arena.
PROGRAM = """
import ctypes, sys, threading
from distill.heap import limit_malloc_arenas, release_freed_heap
if sys.argv[1] == "limit":
    limit_malloc_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
started, hold = threading.Barrier(9), threading.Event()
def work():
    libc.malloc(1 << 16)
    started.wait()
    hold.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
started.wait()
release_freed_heap()
libc.malloc_stats()
hold.set()
"""


def _arenas(mode: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                          env=environ, timeout=60, check=True)
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_arena_cap_holds_under_threads():
    assert _arenas("free") > 2  # the default: a new arena per thread
    assert _arenas("limit") <= 2


def test_users_malloc_arena_max_is_kept():
    assert _arenas("limit", MALLOC_ARENA_MAX="4") == 4
