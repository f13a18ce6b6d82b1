"""Whole-file writes that never leave a half-written file behind.

Metrics, predictions, vocabularies and result tables are read by later runs
(resume, sweep skipping, report); a crash or kill mid-write must leave either
the old file or the new one, never a truncated mix.
"""
from __future__ import annotations

import os
import tempfile


def write_atomically(path: str, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to path via a temp file in the same folder and os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
