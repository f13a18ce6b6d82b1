"""The C heap of a training process: fewer malloc arenas, and compiler memory handed back.

Two glibc behaviours inflate a training process's peak RSS on XLA:CPU:

- every thread of XLA's pools gets its own malloc arena (up to 8 per core), and
  memory freed in one arena is not reused by another; `limit_malloc_arenas`
  caps them at TRAINING_ARENAS before jax starts its threads (the entry
  points that train: distill/train.py, distill/sweep.py, distill/quickstart.py);
- compiling a train step allocates and frees 0.3-0.8 GB (tiny T5); glibc
  keeps the freed pages, and the step's own buffers, allocated next, come from
  fresh pages, so the peak is the compiler's leftovers plus the running step.
  `release_freed_heap` between compiling and running (distill/trainer.py)
  returns them.

Together they cut peak RSS by 0.2-0.3 GB on tiny T5 (README.md, "Training
throughput"); the executables and numerics are unchanged. Both are no-ops
where the C library lacks the call (musl, macOS).

A third behaviour costs time: XLA:CPU allocates each execution's temporary
buffers afresh (one block of ~0.3 GB for a tiny T5 train step), glibc maps
blocks that large with mmap and unmaps them on free, so every step faulted
in ~80,000 fresh 4 KB pages: a third of the step in the kernel.
`restart_with_huge_pages` restarts the command (execve: same pid, same
arguments) with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, where the kernel
gives transparent huge pages on request (THP mode "madvise"): malloc then
asks for 2 MB pages, ~500 faults a step, the same peak RSS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Mapping

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
TRAINING_ARENAS = 2
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"  # glibc >= 2.35; =1: madvise(MADV_HUGEPAGE) on malloc's mappings
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def limit_malloc_arenas(environ: Mapping[str, str] = os.environ) -> None:
    """mallopt(M_ARENA_MAX, TRAINING_ARENAS), unless MALLOC_ARENA_MAX is already the user's choice."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None and "MALLOC_ARENA_MAX" not in environ:
        mallopt(M_ARENA_MAX, TRAINING_ARENAS)


def release_freed_heap() -> None:
    """malloc_trim(0): return free heap pages to the OS (glibc); nothing elsewhere."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def huge_pages_environment(environ: Mapping[str, str], thp_setting: str, libc_version: str) -> dict[str, str] | None:
    """`environ` plus glibc.malloc.hugetlb=1 in GLIBC_TUNABLES, or None where that would change nothing.

    Nothing changes where GLIBC_TUNABLES names the tunable already (a restarted
    process, or the user's choice: glibc.malloc.hugetlb=0 keeps 4 KB pages),
    where the kernel's THP mode is not "madvise" ("always" gives huge pages
    unasked, "never" gives none), or where the C library is not glibc 2.35+.
    """
    tunables = environ.get("GLIBC_TUNABLES", "")
    if HUGE_PAGES_TUNABLE in tunables or "[madvise]" not in thp_setting:
        return None
    name, _, version = libc_version.partition(" ")
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    if name != "glibc" or (major, minor) < (2, 35):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{HUGE_PAGES_TUNABLE}=1")))}


def restart_with_huge_pages() -> None:
    """Re-executes this command (same pid and arguments) with malloc using huge pages; see the module docstring.

    Call it first thing in a process's entry point: the restart discards
    everything done before it. Returns where no restart is needed or possible.
    """
    try:
        with open(THP_SETTING) as setting:
            thp_setting = setting.read()
        libc_version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (OSError, ValueError, AttributeError):  # no THP switch, or no glibc (musl, macOS, Windows)
        return
    environ = huge_pages_environment(os.environ, thp_setting, libc_version)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environ)
    except (OSError, ValueError):  # no interpreter to run again (or no argv, embedded): run on, with 4 KB pages
        return
