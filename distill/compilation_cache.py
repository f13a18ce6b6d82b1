"""The persistent XLA compilation cache: a program compiled once is read back in later runs.

`distill predict` and `distill serve` compile their decoder for each batch
shape on every start (about 5 s of a 1,000-line predict run on the tiny T5,
README.md "Throughput"); sweeps and the quickstart compile the same train
and eval steps in each of their runs. With the cache a repeated run loads
the executables instead. The decoding commands keep theirs in a per-user
folder, `$DISTILL_COMPILATION_CACHE`, else `$XDG_CACHE_HOME/distill/xla`,
else `~/.cache/distill/xla` (DISTILL_COMPILATION_CACHE=off turns it off);
sweeps keep theirs in the sweep folder. jax keys an entry by the program,
the compile options, XLA flags and jax/XLA versions, but not by the CPU's
instruction set: an executable built for AVX-512 would crash a machine
without it that shares the folder (a network home). So every cache lives in
a subfolder named for this machine's architecture and CPU flags. Each
subfolder is held under MAX_BYTES by evicting the least recently used
entries.
"""
from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Mapping

from distill.cpu import CPUINFO, cpu_flags

ENV = "DISTILL_COMPILATION_CACHE"
MAX_BYTES = 2 * 2**30
OFF = ("", "0", "off", "false", "no")


def enable_compilation_cache(cache_dir: str) -> None:
    """Persist this process's XLA executables under `cache_dir`/`host_key()`: call before the first compilation."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(cache_dir, host_key()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)


def host_key(cpuinfo: str = CPUINFO) -> str:
    """This machine's architecture and a digest of its CPU's feature flags, e.g. 'x86_64-3f9c0a1b2c4d'."""
    flags = cpu_flags(cpuinfo)
    if flags is None:  # no /proc/cpuinfo (macOS)
        flags = platform.processor().split()
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    return f"{platform.machine() or 'unknown'}-{digest}"


def user_cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
    """The decoding commands' cache folder (see the module docstring), or None when it is turned off."""
    if ENV in environ:
        chosen = environ[ENV].strip()
        return None if chosen.lower() in OFF else os.path.abspath(os.path.expanduser(chosen))
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "distill", "xla")


def enable_user_compilation_cache(environ: Mapping[str, str] = os.environ) -> None:
    """The decoding commands' cache, when it is not turned off."""
    cache_dir = user_cache_dir(environ)
    if cache_dir is not None:
        enable_compilation_cache(cache_dir)
