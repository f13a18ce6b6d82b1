"""The ASGI application: OpenAI-compatible routes over the dynamic batcher.

Routes: GET /health and GET /metrics (batch sizes, request counts, compiled shapes; JSON), which
need no key, GET /v1/models, POST /v1/completions, POST /v1/chat/completions. Every refusal is OpenAI's
error body (distill/serve/protocol.py) and leaves the server running:

- 401 without the right `Authorization: Bearer` key (compared in constant time; never logged);
- 429 with Retry-After when --max-in-flight generation requests are already in flight (counted
  around the whole ASGI call, so a streamed response holds its slot until its last byte);
- 413 when the body passes --max-body-bytes (checked while it is read, never buffered past it);
- 400 for malformed JSON, wrong types or values, inputs or max_tokens above the limits; 404 for
  another model name or route.

Streaming: the student decodes a whole sequence in one compiled loop, so a stream carries each
choice's text in one chunk (after a first role chunk for chat), then its finish reason, then
`data: [DONE]`.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import logging
import secrets
import time
from typing import AsyncIterator, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distill.predict import detokenize
from distill.serve import protocol
from distill.serve.batcher import Batcher
from distill.serve.decoder import RowDecoder
from distill.serve.protocol import ApiError

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
ROUTES = ("/health", "/metrics", "/v1/models", *GENERATION_PATHS)  # others count as one, so /metrics stays small
DRAIN_FACTOR = 8  # read (and drop) up to this many times the body limit, so the 413 reaches the client

log = logging.getLogger("distill.serve")


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    limits: protocol.Limits
    task_prefix: str
    api_key: str | None = None
    max_in_flight: int = 256
    max_body_bytes: int = 1 << 20
    max_wait_s: float = 0.005


class Traffic:
    """ASGI middleware: counts responses per route and status; bounds generation requests in flight."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.responses: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = f"{scope['method']} {scope['path'] if scope['path'] in ROUTES else '(other)'}"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.responses[f"{route} {message['status']}"] += 1
            await send(message)

        if scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, counting_send)
            return
        if self.in_flight >= self.max_in_flight:
            error = ApiError(429, f"{self.in_flight} requests are in flight, the server's limit "
                                  "(distill serve --max-in-flight); retry shortly", type="rate_limit_error",
                             code="too_many_requests", headers={"Retry-After": "1"})
            await error_response(error)(scope, receive, counting_send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.in_flight -= 1


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, refused with 413 once it passes `limit` bytes (the excess is drained, not kept)."""
    declared = request.headers.get("content-length", "")
    too_large = ApiError(413, f"the request body is over this server's limit of {limit} bytes "
                              "(distill serve --max-body-bytes)", code="request_too_large")
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > DRAIN_FACTOR * limit:
            break
        if size <= limit:
            chunks.append(piece)
    if size > limit:
        raise too_large
    return b"".join(chunks)


class Service:
    """The routes' state: tokenizer, batcher, options; one per application."""

    def __init__(self, decoder: RowDecoder, tokenizer, options: ServeOptions, eos_id: int,
                 in_flight: Callable[[], int]) -> None:
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.options = options
        self.eos_id = eos_id
        self.batcher = Batcher(decoder, max_wait_s=options.max_wait_s, in_flight=in_flight)

    def check_key(self, request: HttpRequest) -> None:
        expected = self.options.api_key
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "missing API key: send the header `Authorization: Bearer <key>`",
                           code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    def detokenize(self, ids: list[int]) -> str:
        """Text of generated ids (distill/predict.py's rule: ids past the tokenizer read as unk)."""
        return detokenize(self.tokenizer, ids, eos_id=self.eos_id, unk_id=self.tokenizer.unk_id())

    async def generate(self, http: HttpRequest, chat: bool) -> Response:
        self.check_key(http)
        body = protocol.parse_body(await read_body(http, self.options.max_body_bytes))
        limits = self.options.limits
        request = protocol.parse_request(body, chat=chat, limits=limits)
        encoded = protocol.encode_inputs(request, self.tokenizer.encode, prefix=self.options.task_prefix,
                                         eos_id=self.eos_id, max_input_tokens=limits.max_input_tokens)
        sampling = request.settings.method == "sample"
        per_prompt = request.n if sampling else 1
        futures = self.batcher.submit([ids for ids in encoded for _ in range(per_prompt)], request.settings,
                                      seed=request.seed if sampling else None)
        answer = dict(id=f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}", created=int(time.time()),
                      model=limits.model_name)
        prompt_tokens = [len(ids) for ids in encoded]
        if request.stream:
            return StreamingResponse(self._events(request, answer, futures, prompt_tokens, per_prompt),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        choices = await self._choices(request, futures, per_prompt)
        return JSONResponse(protocol.response_body(request, **answer, choices=choices,
                                                   usage=protocol.usage(prompt_tokens, choices)))

    async def _choices(self, request: protocol.Request, futures: Sequence[asyncio.Future],
                       per_prompt: int) -> list[protocol.Choice]:
        """Prompt-major choices (OpenAI's order: prompt i's n choices are i*n .. i*n+n-1)."""
        try:
            generated = await asyncio.gather(*futures)
        except Exception as err:
            log.exception("decoding failed")
            raise ApiError(500, f"decoding failed ({type(err).__name__})", type="server_error") from None
        choices = []
        for prompt in range(len(futures) // per_prompt):
            for sample in range(request.n):
                row = generated[prompt * per_prompt + (sample if per_prompt > 1 else 0)]
                choices.append(protocol.finish(row, max_tokens=request.max_tokens, stop=request.stop,
                                               detokenize=self.detokenize))
        return choices

    async def _events(self, request: protocol.Request, answer: dict, futures: Sequence[asyncio.Future],
                      prompt_tokens: list[int], per_prompt: int) -> AsyncIterator[bytes]:
        total = len(request.texts) * request.n
        if request.chat:
            for index in range(total):
                yield protocol.server_sent_event(protocol.chunk(request, **answer, index=index, role=True))
        try:
            choices = await self._choices(request, futures, per_prompt)
        except ApiError as err:
            yield protocol.server_sent_event(err.body())
            return
        for index, choice in enumerate(choices):
            if choice.text:
                yield protocol.server_sent_event(protocol.chunk(request, **answer, index=index, text=choice.text))
            yield protocol.server_sent_event(protocol.chunk(request, **answer, index=index,
                                                            finish_reason=choice.finish_reason))
        if request.include_usage:
            yield protocol.server_sent_event(protocol.chunk(request, **answer,
                                                            usage=protocol.usage(prompt_tokens, choices)))
        yield protocol.server_sent_event("[DONE]")


def create_app(decoder: RowDecoder, tokenizer, options: ServeOptions, *, eos_id: int = 1) -> Traffic:
    """The ASGI application (Starlette inside `Traffic`); the batcher starts and stops with its lifespan."""
    service = Service(decoder, tokenizer, options, eos_id, in_flight=lambda: traffic.in_flight)

    async def health(_: HttpRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(_: HttpRequest) -> Response:
        programs = getattr(decoder, "programs", None)
        return JSONResponse({"requests": dict(sorted(traffic.responses.items())), "in_flight": traffic.in_flight,
                             "batcher": service.batcher.stats(), "programs": programs() if programs else []})

    async def models(http: HttpRequest) -> Response:
        service.check_key(http)
        return JSONResponse({"object": "list", "data": [{"id": options.limits.model_name, "object": "model",
                                                         "created": 0, "owned_by": "distill"}]})

    async def completions(http: HttpRequest) -> Response:
        return await service.generate(http, chat=False)

    async def chat_completions(http: HttpRequest) -> Response:
        return await service.generate(http, chat=True)

    async def on_api_error(_: HttpRequest, error: Exception) -> Response:
        return error_response(error)

    async def on_http_error(_: HttpRequest, error: Exception) -> Response:
        code = "not_found" if error.status_code == 404 else None
        return error_response(ApiError(error.status_code, str(error.detail), code=code))

    async def on_bug(_: HttpRequest, error: Exception) -> Response:
        return error_response(ApiError(500, f"internal error ({type(error).__name__})", type="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = Starlette(routes=[
        Route("/health", health), Route("/metrics", metrics), Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_bug},
        lifespan=lifespan)
    traffic = Traffic(app, max_in_flight=options.max_in_flight)
    return traffic
