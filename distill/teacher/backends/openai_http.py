"""OpenAI-compatible HTTP backend: /v1/completions and /v1/chat/completions.

Works with vLLM, SGLang, TGI's OpenAI route and hosted APIs. Each request in
flight borrows its own httpx transport holding one keep-alive connection and
hands it back afterwards, so connections are reused and never outnumber the
batcher's concurrency. (One shared pool with hundreds of connections spends
most of its time scanning itself: httpcore's request-to-connection
assignment is quadratic in the pool size.) Requests go to the transport
directly, not through `httpx.AsyncClient`: the client's per-request layers
(request building, cookie extraction through urllib, auth and redirect
plumbing, event hooks) were a third of the CPU per request in a cProfile of
scripts/bench_teacher.py at concurrency 256, and none of them apply here.

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

import importlib.util
import json
import math
import sys
from typing import Any

import httpx

from distill.errors import UserError
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


def retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds, when it gave a finite number (the batcher caps it)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date or garbage: fall back to our own backoff
    return max(0.0, seconds) if math.isfinite(seconds) else None


def response_error(response: httpx.Response, where: str, secret: str | None) -> RequestError:
    """A non-success response as a redacted RequestError (retryable for 429, 5xx, ...)."""
    detail = redact(response.text, secret)[:300].strip()  # redacted first: a cut key would survive
    return RequestError(f"HTTP {response.status_code} from {where}: {detail}",
                        retryable=response.status_code in RETRYABLE_STATUS or response.status_code >= 500,
                        retry_after=retry_after(response))


def transport_error(err: Exception, secret: str | None) -> RequestError:
    """A connect error, dropped connection or protocol error: always worth a retry."""
    return RequestError(redact(f"{type(err).__name__}: {err}", secret), retryable=True)


async def read_bounded(response: httpx.Response, limit: int, where: str) -> bytes:
    """The body, read as it streams in; a RequestError (not retried) once it passes `limit` bytes."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():  # decoded: a compressed bomb is bounded too
        size += len(chunk)
        if size > limit:
            raise RequestError(f"reply from {where} is larger than {limit:,} bytes (--max-response-bytes)",
                               retryable=False)
        chunks.append(chunk)
    return b"".join(chunks)


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


def _remember_sniffio_is_missing() -> None:
    """Make the failed `import sniffio` that httpcore tries on every lock it creates cheap.

    httpcore treats sniffio as optional; when it is not installed, each of the
    several look-ups per request searches sys.path again (about a quarter of
    the client's CPU per request in scripts/bench_teacher.py). A None entry in
    sys.modules makes that import fail at once, exactly as it would anyway.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None


def declare_asyncio() -> None:
    """Tell sniffio (when installed) that this context runs asyncio, so it stops sniffing.

    httpcore and anyio ask `sniffio.current_async_library()` about twenty
    times per request; without a declaration each call falls through to
    `asyncio.current_task()` (the largest single own-time entry of the client
    in cProfile). Setting sniffio's context variable is the hook event loops
    use to declare themselves; tasks created afterwards inherit it.
    """
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        sniffio.current_async_library_cvar.set("asyncio")


class OpenAIBackend:
    """`generate(prompt)`: a str prompt goes to /completions, chat messages to /chat/completions."""

    kind = "openai"

    def __init__(self, *, base_url: str, model: str, api_key: str | None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        _remember_sniffio_is_missing()
        self.model = model
        self.base_url = check_base_url(base_url)
        # Parsed once: httpx re-parses a str URL on every request.
        self._urls = {path: httpx.URL(self.base_url + path) for path in ("/completions", "/chat/completions")}
        self._api_key = api_key
        self.max_response_bytes = max_response_bytes
        self._headers = [(b"Content-Type", b"application/json"),
                         *((k.encode(), v.encode()) for k, v in auth_headers(api_key).items())]
        self._ssl = httpx.create_ssl_context()  # built once: loading CA certificates takes ~0.1 s
        self._idle: list[httpx.AsyncHTTPTransport] = []  # transports not in use, each with one open connection
        self._all: list[httpx.AsyncHTTPTransport] = []

    def _borrow(self) -> httpx.AsyncHTTPTransport:
        if self._idle:
            return self._idle.pop()
        transport = httpx.AsyncHTTPTransport(verify=self._ssl,
                                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        self._all.append(transport)
        return transport

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Completion:
        declare_asyncio()
        path, body = request_body(self.model, prompt, params)
        # timeout=None (the default extension): the batcher bounds each attempt as a whole.
        request = httpx.Request("POST", self._urls[path], headers=self._headers,
                                content=json.dumps(body, ensure_ascii=False).encode("utf-8"))
        transport = self._borrow()
        try:
            response = await transport.handle_async_request(request)
            try:
                content = await read_bounded(response, self.max_response_bytes, path)
            finally:
                await response.aclose()
        except httpx.TransportError as err:  # connect errors, dropped connections, protocol errors
            raise transport_error(err, self._api_key) from None
        finally:
            self._idle.append(transport)  # also after a timeout's cancellation: httpcore closed the broken connection
        if response.status_code != 200:
            headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-encoding"]  # decoded
            read = httpx.Response(response.status_code, headers=headers, content=content)
            raise response_error(read, path, self._api_key)
        try:
            data = json.loads(content)
        except ValueError:
            raise RequestError(f"malformed response from {path}: JSONDecodeError", retryable=True) from None
        return completion_from_body(data, chat=not isinstance(prompt, str), n=params.n, where=path)

    async def aclose(self) -> None:
        for transport in self._all:
            await transport.aclose()
