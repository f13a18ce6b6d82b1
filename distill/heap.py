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
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Mapping

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
TRAINING_ARENAS = 2


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
