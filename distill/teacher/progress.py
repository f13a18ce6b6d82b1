"""The one-line progress report on stderr: done/total, req/s, tok/s, errors, ETA.

On a terminal the line is redrawn in place; into a file or pipe (CI logs,
nohup) a full line is written at most every `interval` seconds so logs stay
short. Rates count only requests made by this run, not cache hits, so a
resumed run shows the server's real throughput.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock_text(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counters for one run plus their rendering."""

    def __init__(self, total: int, *, already_done: int = 0, stream: TextIO | None = None,
                 interval: float = 1.0, label: str = "teacher") -> None:
        self.total = total
        self.done = already_done
        self.requested = 0  # prompts answered or failed by this run
        self.errors = 0  # prompts that ended failed
        self.retries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._label = label
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())

    def record(self, *, ok: bool, prompt_tokens: int | None = None, completion_tokens: int | None = None) -> None:
        self.done += 1
        self.requested += 1
        self.errors += 0 if ok else 1
        self.prompt_tokens += prompt_tokens or 0
        self.completion_tokens += completion_tokens or 0
        self.maybe_draw()

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self._start)
        req_rate = self.requested / elapsed
        tok_rate = (self.prompt_tokens + self.completion_tokens) / elapsed
        remaining = self.total - self.done
        eta = _clock_text(remaining / req_rate) if req_rate > 0 else "?"
        return (f"{self._label}: {self.done}/{self.total} done | {req_rate:.1f} req/s | {tok_rate:.0f} tok/s"
                f" | errors {self.errors} | retries {self.retries} | ETA {eta}")

    def maybe_draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self._interval:
            return
        self._last_draw = now
        if self._tty:
            self._stream.write("\r" + self.line() + "\x1b[K")
            if force:
                self._stream.write("\n")
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()
