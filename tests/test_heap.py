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


GLIBC = "glibc 2.36"


def test_huge_pages_environment_asks_only_where_it_changes_something():
    from distill.heap import huge_pages_environment

    madvise = "always [madvise] never\n"
    assert huge_pages_environment({"A": "1"}, madvise, GLIBC) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
    assert huge_pages_environment(mine, madvise, GLIBC)["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
    assert huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise, GLIBC) is None  # the user's
    assert huge_pages_environment({}, "[always] madvise never", GLIBC) is None  # huge pages unasked
    assert huge_pages_environment({}, "always madvise [never]", GLIBC) is None
    assert huge_pages_environment({}, madvise, "glibc 2.31") is None  # no such tunable before 2.35
    assert huge_pages_environment({}, madvise, "musl 1.2") is None
    assert huge_pages_environment({}, madvise, "") is None


RESTART = """
import os, sys
from distill.heap import restart_with_huge_pages
print(os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
restart_with_huge_pages()
print("ran on", os.getpid(), flush=True)
"""


def test_a_restart_keeps_the_pid_and_arguments_and_happens_once():
    from distill.heap import THP_SETTING, huge_pages_environment

    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    with open(THP_SETTING) if os.path.exists(THP_SETTING) else open(os.devnull) as setting:
        restarts = huge_pages_environment(environ, setting.read(), os.confstr("CS_GNU_LIBC_VERSION")) is not None
    done = subprocess.run([sys.executable, "-c", RESTART, "a b", "--c"], capture_output=True, text=True,
                          env=environ, timeout=60, check=True)
    lines = done.stdout.splitlines()
    pid = lines[0].split()[0]
    if restarts:
        assert lines[1] == f"{pid} glibc.malloc.hugetlb=1 ['a b', '--c']"
    assert lines[-1] == f"ran on {pid}" and len(lines) == 2 + restarts
    mine = subprocess.run([sys.executable, "-c", RESTART, "x"], capture_output=True, text=True, timeout=60, check=True,
                          env=environ | {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert len(mine.stdout.splitlines()) == 2  # the user's setting: no restart
