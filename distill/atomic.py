"""Writes that never leave a half-written file behind.

Metrics, predictions, vocabularies, teacher outputs and result tables are
read by later runs (resume, sweep skipping, report); a crash, kill or full
disk mid-write must leave either the old file or the new one, never a
truncated mix. One policy for every writer in the package: write a temp file
in the target's folder, flush and fsync it, then `os.replace` it over the
target; on any failure the temp file is removed and the target is untouched.
"""
from __future__ import annotations

import os
import tempfile
from typing import IO


class AtomicFile:
    """A text file that appears at `path` only when complete.

        with AtomicFile("out/teacher.jsonl") as out:
            for line in lines:
                out.write(line)

    Leaving the block by an exception (Ctrl-C included) discards the temp
    file and keeps whatever `path` held before.
    """

    def __init__(self, path: str, *, binary: bool = False) -> None:
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        self._handle: IO = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")

    def write(self, data: str | bytes) -> None:
        self._handle.write(data)

    def commit(self) -> None:
        """Flush, fsync and move the temp file over `path`."""
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and remove the temp file; `path` keeps its previous content."""
        if not self._handle.closed:
            self._handle.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomically(path: str, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` in one step (see AtomicFile)."""
    with AtomicFile(path, binary=isinstance(data, bytes)) as out:
        out.write(data)


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(staging: str, target: str) -> None:
    """Puts the finished folder `staging` at `target`, so that `target` is never missing.

    An existing `target` is swapped with `staging` in one step and then
    removed; where the kernel cannot swap, the two renames run with SIGINT
    and SIGTERM held back, so Ctrl-C cannot fall between them.
    """
    import shutil
    import signal

    if not os.path.exists(target):
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now the old content
        return
    retired = f"{staging}.old"
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        os.replace(target, retired)
        os.replace(staging, target)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    shutil.rmtree(retired, ignore_errors=True)
