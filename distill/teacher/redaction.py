"""Keeping the API key out of everything the teacher writes or prints.

The key lives in one place (the HTTP client's headers). Anything that turns an
exception, a server reply or a completion into text — recorded failures,
cached answers, progress lines, the end summary — goes through `redact` with
the key first, before any truncation (a key cut in half by a length limit
would survive as a prefix). Libraries quote a key in escaped form (httpx
writes `'sk-..\\r'` for a key with a control character), so those forms are
redacted too; `check_api_key` refuses such keys at start-up anyway.
"""
from __future__ import annotations

import json

from distill.errors import UserError

MARK = "[REDACTED]"


def _forms(secret: str) -> list[str]:
    """The key as it may appear in text: raw, repr-escaped, JSON-escaped, bytes-escaped."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1],
             secret.encode("unicode_escape").decode("ascii"), repr(secret.encode("utf-8"))[2:-1]}
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact(text: str, secret: str | None) -> str:
    """`text` with every form of `secret` replaced (no-op without a secret)."""
    if secret:
        for form in _forms(secret):
            text = text.replace(form, MARK)
    return text


def check_api_key(key: str | None, variable: str) -> str | None:
    """The key, or a UserError (never showing it) when it has whitespace or control characters."""
    if key is None:
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in key):
        raise UserError(f"the API key in ${variable} contains whitespace or control characters (a trailing "
                        "newline or \\r from a .env file?); strip them and export it again")
    return key
