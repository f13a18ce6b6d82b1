"""OpenAI-compatible HTTP backend: /v1/completions and /v1/chat/completions.

Works with vLLM, SGLang, TGI's OpenAI route and hosted APIs. One
`httpx.AsyncClient` is shared by all requests, so connections are reused
(keep-alive). The pool itself is unbounded: the batcher's worker count is the
one bound on requests in flight, so no attempt's timeout is spent queueing
for a pooled connection. The class makes exactly one attempt
per call and turns every failure into a `RequestError` that says whether a
retry may help; retries, pacing and timeouts-overall live in the batcher.

The API key is sent only in the Authorization header. Every error message is
passed through `redact` before it leaves this module, because servers
sometimes echo request headers in their error bodies.
"""
from __future__ import annotations

import json
from typing import Any

import httpx

from distill.errors import UserError
from distill.teacher.backends.base import Prompt, RequestError, SamplingParams
from distill.teacher.cache import Completion
from distill.teacher.redaction import redact

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class OpenAIBackend:
    """`generate(prompt)`: a str prompt goes to /completions, chat messages to /chat/completions."""

    kind = "openai"

    def __init__(self, *, base_url: str, model: str, api_key: str | None, keepalive: int = 64) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=keepalive),
            timeout=None,  # the batcher bounds each attempt with asyncio.wait_for
        )

    def _body(self, prompt: Prompt, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p, "n": params.n}
        if params.stop:
            body["stop"] = list(params.stop)
        if isinstance(prompt, str):
            return "/completions", {**body, "prompt": prompt}
        return "/chat/completions", {**body, "messages": prompt}

    async def generate(self, prompt: Prompt, params: SamplingParams, *, timeout: float) -> Completion:
        path, body = self._body(prompt, params)
        try:
            response = await self._client.post(self.base_url + path, json=body)
        except httpx.TransportError as err:  # connect errors, dropped connections, protocol errors
            raise RequestError(redact(f"{type(err).__name__}: {err}", self._api_key), retryable=True) from None
        if response.status_code != 200:
            detail = redact(response.text[:300].strip(), self._api_key)
            raise RequestError(
                f"HTTP {response.status_code} from {path}: {detail}",
                retryable=response.status_code in RETRYABLE_STATUS or response.status_code >= 500,
                retry_after=_retry_after(response),
            )
        try:
            data = response.json()
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if isinstance(prompt, str):
                texts = tuple(str(c["text"]) for c in choices)
            else:
                texts = tuple(str(c["message"]["content"] or "") for c in choices)
            usage = data.get("usage") or {}
        except (ValueError, KeyError, TypeError) as err:
            # A truncated or garbled body: the server had a bad moment, try again.
            raise RequestError(f"malformed response from {path}: {type(err).__name__}", retryable=True) from None
        if len(texts) != params.n:
            raise RequestError(f"asked for n={params.n} samples, got {len(texts)} from {path}", retryable=False)
        return Completion(texts, usage.get("prompt_tokens"), usage.get("completion_tokens"))

    async def aclose(self) -> None:
        await self._client.aclose()
