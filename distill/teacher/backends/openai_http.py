"""OpenAI-compatible HTTP backend: /v1/completions and /v1/chat/completions.

Works with vLLM, SGLang, TGI's OpenAI route and hosted APIs. Requests go
through the lean HTTP/1.1 client in http1.py: one keep-alive connection per
request in flight, each request one write, replies parsed in C. httpx cost
1.6 ms of CPU a request at 256 in flight in scripts/bench_teacher.py, which
held the run to 41% of the server's rate.

`generate` makes exactly one attempt and turns every failure into a
`RequestError` that says whether a retry may help; retries, pacing and the
per-attempt timeout live in the batcher.

The helpers below (URL check, auth header, request body, error and response
parsing) are shared with the Batch API client in `openai_batch.py`, so both
send the same bodies and read answers the same way.

The API key is sent only in the Authorization header. Every error message is
passed through `redact` before it leaves this module, because servers
sometimes echo request headers in their error bodies.
"""
from __future__ import annotations

import json
import math
from typing import Any

import httpx

from distill.errors import UserError
from distill.teacher.backends import http1
from distill.teacher.backends.base import Prompt, RequestError, SamplingParams
from distill.teacher.cache import Completion
from distill.teacher.redaction import redact

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 16 << 20  # a completion reply is kilobytes; a runaway server is not read whole


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash; UserError unless it is http(s)."""
    if not base_url.startswith(("http://", "https://")):
        raise UserError(f"--base-url {base_url!r} must start with http:// or https:// "
                        "(e.g. http://127.0.0.1:8000/v1)")
    return base_url.rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The only place the key goes: a Bearer Authorization header (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds, when it is a finite number (the batcher caps it)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date or garbage: fall back to our own backoff
    return max(0.0, seconds) if math.isfinite(seconds) else None


def response_error(status: int, text: str, retry_after_header: str | None, where: str,
                   secret: str | None) -> RequestError:
    """A non-success reply as a redacted RequestError (retryable for 429, 5xx, ...)."""
    detail = redact(text, secret)[:300].strip()  # redacted first: a cut key would survive
    return RequestError(f"HTTP {status} from {where}: {detail}",
                        retryable=status in RETRYABLE_STATUS or status >= 500,
                        retry_after=retry_after(retry_after_header))


def transport_error(err: Exception, secret: str | None) -> RequestError:
    """A connect error, dropped connection or protocol error: always worth a retry."""
    return RequestError(redact(f"{type(err).__name__}: {err}", secret), retryable=True)


def request_body(model: str, prompt: Prompt, params: SamplingParams) -> tuple[str, dict[str, Any]]:
    """(path under the base URL, JSON body): a str prompt to /completions, messages to /chat/completions."""
    body: dict[str, Any] = {"model": model, "max_tokens": params.max_tokens,
                            "temperature": params.temperature, "top_p": params.top_p, "n": params.n}
    if params.stop:
        body["stop"] = list(params.stop)
    if isinstance(prompt, str):
        return "/completions", {**body, "prompt": prompt}
    return "/chat/completions", {**body, "messages": prompt}


def completion_from_body(data: Any, *, chat: bool, n: int, where: str) -> Completion:
    """The Completion in a (chat) completion response body; RequestError when it is garbled."""
    try:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        if chat:
            texts = tuple(str(c["message"]["content"] or "") for c in choices)
        else:
            texts = tuple(str(c["text"]) for c in choices)
        usage = data.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    except (KeyError, TypeError, AttributeError) as err:
        # A truncated or garbled body: the server had a bad moment, try again.
        raise RequestError(f"malformed response from {where}: {type(err).__name__}", retryable=True) from None
    if len(texts) != n:
        raise RequestError(f"asked for n={n} samples, got {len(texts)} from {where}", retryable=False)
    return Completion(texts, prompt_tokens if isinstance(prompt_tokens, int) else None,
                      completion_tokens if isinstance(completion_tokens, int) else None)


class OpenAIBackend:
    """`generate(prompt)`: a str prompt goes to /completions, chat messages to /chat/completions."""

    kind = "openai"

    def __init__(self, *, base_url: str, model: str, api_key: str | None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.model = model
        self.base_url = check_base_url(base_url)
        self._api_key = api_key
        self.max_response_bytes = max_response_bytes
        # httpx's context: certifi's CAs and SSL_CERT_FILE / SSL_CERT_DIR, as the batch client trusts.
        ssl_context = httpx.create_ssl_context() if self.base_url.startswith("https://") else None
        try:
            self._origin = http1.Origin(self.base_url, ssl_context=ssl_context,
                                        headers={"Content-Type": "application/json", **auth_headers(api_key)})
        except ValueError as err:
            raise UserError(f"--base-url {base_url!r}: {err}") from None

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        path, body = request_body(self.model, prompt, params)
        try:
            response = await self._origin.post(path, json.dumps(body, ensure_ascii=False).encode("utf-8"),
                                               max_body_bytes=self.max_response_bytes)
        except http1.ReplyTooLarge as err:
            raise RequestError(f"{err} from {path} (--max-response-bytes)", retryable=False) from None
        except http1.ConnectionFailed as err:
            raise RequestError(redact(str(err), self._api_key), retryable=err.retryable) from None
        if response.status != 200:
            raise response_error(response.status, response.body.decode("utf-8", "replace"),
                                 response.headers.get("retry-after"), path, self._api_key)
        try:
            data = json.loads(response.body)
        except ValueError:
            raise RequestError(f"malformed response from {path}: JSONDecodeError", retryable=True) from None
        return completion_from_body(data, chat=not isinstance(prompt, str), n=params.n, where=path)

    async def aclose(self) -> None:
        await self._origin.aclose()
