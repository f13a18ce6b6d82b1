"""OpenAI-compatible HTTP backend: /v1/completions and /v1/chat/completions.

Works with vLLM, SGLang, TGI's OpenAI route and hosted APIs. Each request in
flight borrows its own `httpx.AsyncClient` holding one keep-alive connection
and hands it back afterwards, so connections are reused and never outnumber
the batcher's concurrency. (One shared client with hundreds of connections
spends most of its time scanning its own pool: httpcore's request-to-connection
assignment is quadratic in the pool size.)

`generate` makes exactly one attempt and turns every failure into a
`RequestError` that says whether a retry may help; retries, pacing and the
per-attempt timeout live in the batcher.

The API key is sent only in the Authorization header. Every error message is
passed through `redact` before it leaves this module, because servers
sometimes echo request headers in their error bodies.
"""
from __future__ import annotations

import importlib.util
import sys
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


def _remember_sniffio_is_missing() -> None:
    """Make the failed `import sniffio` that httpcore tries on every lock it creates cheap.

    httpcore treats sniffio as optional; when it is not installed, each of the
    several look-ups per request searches sys.path again (about a quarter of
    the client's CPU per request in scripts/bench_teacher.py). A None entry in
    sys.modules makes that import fail at once, exactly as it would anyway.
    Installing sniffio makes this a no-op.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None


class OpenAIBackend:
    """`generate(prompt)`: a str prompt goes to /completions, chat messages to /chat/completions."""

    kind = "openai"

    def __init__(self, *, base_url: str, model: str, api_key: str | None) -> None:
        _remember_sniffio_is_missing()
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {base_url!r} must start with http:// or https:// "
                            "(e.g. http://127.0.0.1:8000/v1)")
        self.model = model
        self.base_url = base_url.rstrip("/")
        # Parsed once: httpx re-parses a str URL on every request.
        self._urls = {path: httpx.URL(self.base_url + path) for path in ("/completions", "/chat/completions")}
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._ssl = httpx.create_ssl_context()  # built once: loading CA certificates takes ~0.1 s
        self._idle: list[httpx.AsyncClient] = []  # clients not in use, each with one open connection
        self._all: list[httpx.AsyncClient] = []

    def _borrow(self) -> httpx.AsyncClient:
        if self._idle:
            return self._idle.pop()
        # timeout=None: the batcher bounds each attempt as a whole.
        client = httpx.AsyncClient(headers=self._headers, verify=self._ssl, timeout=None,
                                   limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        self._all.append(client)
        return client

    def _body(self, prompt: Prompt, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p, "n": params.n}
        if params.stop:
            body["stop"] = list(params.stop)
        if isinstance(prompt, str):
            return "/completions", {**body, "prompt": prompt}
        return "/chat/completions", {**body, "messages": prompt}

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        path, body = self._body(prompt, params)
        client = self._borrow()
        try:
            response = await client.post(self._urls[path], json=body)
        except httpx.TransportError as err:  # connect errors, dropped connections, protocol errors
            raise RequestError(redact(f"{type(err).__name__}: {err}", self._api_key), retryable=True) from None
        finally:
            self._idle.append(client)  # also after a timeout's cancellation: httpx closed the broken connection
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
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            # A truncated or garbled body: the server had a bad moment, try again.
            raise RequestError(f"malformed response from {path}: {type(err).__name__}", retryable=True) from None
        if len(texts) != params.n:
            raise RequestError(f"asked for n={params.n} samples, got {len(texts)} from {path}", retryable=False)
        return Completion(texts, usage.get("prompt_tokens"), usage.get("completion_tokens"))

    async def aclose(self) -> None:
        for client in self._all:
            await client.aclose()
