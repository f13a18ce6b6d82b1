"""Keeping the API key out of everything the teacher writes or prints.

The key lives in one place (the HTTP client's headers). Anything that turns an
exception or a server reply into text — recorded failures, progress lines,
the end summary — goes through `redact` with the key first.
"""
from __future__ import annotations


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced (no-op without a secret)."""
    if secret:
        text = text.replace(secret, "[REDACTED]")
    return text
