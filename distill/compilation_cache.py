"""The persistent XLA compilation cache: a program compiled once is read back in later runs.

`distill predict` and `distill serve` compile their decoder for each batch
shape on every start (about 5 s of a 1,000-line predict run on the tiny T5,
README.md "Throughput"); sweeps and the quickstart compile the same train
and eval steps in each of their runs. With the cache a repeated run loads
the executables instead. The decoding commands keep theirs in a per-user
folder, `$DISTILL_COMPILATION_CACHE`, else `$XDG_CACHE_HOME/distill/xla`,
else `~/.cache/distill/xla` (DISTILL_COMPILATION_CACHE=off turns it off);
sweeps keep theirs in the sweep folder. Entries are keyed by the program,
the jax/XLA versions and the machine's CPU features, so a stale or foreign
entry is never used, and the folder is held under MAX_BYTES by evicting the
least recently used entries.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

ENV = "DISTILL_COMPILATION_CACHE"
MAX_BYTES = 2 * 2**30
OFF = ("", "0", "off", "false", "no")


def enable_compilation_cache(cache_dir: str) -> None:
    """Persist this process's XLA executables under `cache_dir`: call before the first compilation."""
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)


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
