"""OpenAI wire format: request bodies in (checked field by field), response bodies and chunks out.

Pure functions and frozen dataclasses, no model and no HTTP, so every rule is testable alone. A
bad request raises `ApiError`, which distill/serve/app.py turns into OpenAI's error body
`{"error": {"message", "type", "param", "code"}}` with its HTTP status.

Decoding choices: greedy unless temperature > 0 (OpenAI's default is 1; a distilled student is
meant to be read greedily, so the default here is 0); `"num_beams": k` (an extra field) runs beam
search; with greedy or beam search, `n` copies the one decoded answer. `max_tokens` cuts a
sequence decoded to the server's --max-new-tokens. `usage`: prompt tokens are the encoder tokens
(task prefix and EOS included), completion tokens the generated tokens before EOS, after the cut.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

from distill.serve.decoder import GREEDY, Generated, Settings

MAX_N = 128
MAX_CHOICES = 1024  # prompts x n of one request
MAX_BEAMS = 16
MAX_STOP = 4


class ApiError(Exception):
    """A request the server refuses: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclasses.dataclass(frozen=True)
class Limits:
    model_name: str
    max_input_tokens: int
    max_new_tokens: int


@dataclasses.dataclass(frozen=True)
class Request:
    """A checked (chat) completion request. texts: the inputs before the task prefix."""

    chat: bool
    texts: tuple[str, ...]
    n: int
    max_tokens: int
    settings: Settings
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body; ApiError 400 otherwise."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


def _integer(body: dict, name: str, default: int | None, low: int | None = None, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"expected an integer, got {json.dumps(value)[:40]}")
    if low is not None and value < low:
        raise _bad(name, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise _bad(name, f"must be <= {high}, got {value}")
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, *, open_low: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, f"expected a number, got {json.dumps(value)[:40]}")
    if value > high or value < low or (open_low and value == low):
        raise _bad(name, f"must be in {'(' if open_low else '['}{low}, {high}], got {value}")
    return float(value)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(name, "expected true or false")
    return bool(value)


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise _bad("stop", f"expected a non-empty string or a list of at most {MAX_STOP} of them")
    return tuple(stops)


def _texts(body: dict, chat: bool) -> tuple[str, ...]:
    if not chat:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise _bad("prompt", "expected a string or a non-empty list of strings (token-id prompts are not "
                                 "supported: send text)")
        return tuple(prompts)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _bad("messages", "expected a non-empty list of {\"role\", \"content\"} objects")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise _bad("messages", "needs a message with role \"user\": the last one is the model's input")
    return (_content_text(users[-1].get("content")),)


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                         and isinstance(part.get("text"), str) for part in content):
        return "".join(part["text"] for part in content)
    raise _bad("messages", 'a user message\'s content must be a string or a list of {"type": "text", "text"} parts')


def parse_request(body: dict, *, chat: bool, limits: Limits) -> Request:
    """Check a (chat) completion body against the server's limits; ApiError (400, 404) when it does not fit."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "required: a model name (GET /v1/models lists it)")
    if model != limits.model_name:
        raise ApiError(404, f"the model {model!r} does not exist: this server serves {limits.model_name!r}",
                       param="model", code="model_not_found")
    texts = _texts(body, chat)
    for unsupported in ("logprobs", "echo"):
        if body.get(unsupported) not in (None, False, 0):
            raise _bad(unsupported, "not supported by this server")
    limit_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, limit_name, limits.max_new_tokens, 1)
    if max_tokens > limits.max_new_tokens:
        raise ApiError(400, f"{limit_name} {max_tokens} is above this server's limit of {limits.max_new_tokens} new "
                            "tokens (distill serve --max-new-tokens)", param=limit_name, code="max_tokens_exceeded")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, open_low=True)
    num_beams = _integer(body, "num_beams", 1, 1, MAX_BEAMS)
    if num_beams > 1 and temperature > 0:
        raise _bad("num_beams", "beam search is deterministic: send temperature 0 (or leave it out) with num_beams")
    if temperature > 0:
        settings = Settings("sample", temperature=temperature, top_p=top_p)
    elif num_beams > 1:
        settings = Settings("beam", num_beams=num_beams)
    else:
        settings = GREEDY
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", "expected an object")
    include_usage = _flag(options or {}, "include_usage")
    n = _integer(body, "n", 1, 1, MAX_N)
    if len(texts) * n > MAX_CHOICES:
        raise _bad("n", f"{len(texts)} prompts x n={n} is over {MAX_CHOICES} choices per request: split it")
    return Request(chat=chat, texts=texts, n=n, max_tokens=max_tokens,
                   settings=settings, stop=_stop(body), seed=_integer(body, "seed", None), stream=stream,
                   include_usage=include_usage)


def encode_inputs(request: Request, encode: Callable[[str], Sequence[int]], *, prefix: str, eos_id: int,
                  max_input_tokens: int) -> list[list[int]]:
    """Encoder ids per input: task prefix + text, then EOS; ApiError 400 when one is over the limit."""
    encoded = []
    for text in request.texts:
        ids = [*encode(prefix + text), eos_id]
        if len(ids) > max_input_tokens:
            raise ApiError(400, f"the input is {len(ids)} tokens (task prefix and EOS included), above this server's "
                                f"limit of {max_input_tokens} (distill serve --max-input-tokens)",
                           param="messages" if request.chat else "prompt", code="context_length_exceeded")
        encoded.append(ids)
    return encoded


@dataclasses.dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens)
    completion_tokens: int


def finish(generated: Generated, *, max_tokens: int, stop: Sequence[str],
           detokenize: Callable[[list[int]], str]) -> Choice:
    """A decoded row as the client sees it: cut to max_tokens, then at the first stop string."""
    ids = generated.ids[:max_tokens]
    reason = "stop" if generated.ended and len(generated.ids) < max_tokens else "length"
    text = detokenize(ids)
    cuts = [text.find(s) for s in stop if s in text]
    if cuts:
        text, reason = text[:min(cuts)], "stop"
    return Choice(text, reason, len(ids))


def usage(prompt_tokens: Sequence[int], choices: Sequence[Choice]) -> dict:
    """OpenAI usage: each prompt counted once (not once per choice), every choice's tokens."""
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": sum(prompt_tokens), "completion_tokens": completion,
            "total_tokens": sum(prompt_tokens) + completion}


def response_body(request: Request, *, id: str, created: int, model: str, choices: Sequence[Choice],
                  usage: dict) -> dict:
    """The non-streamed `text_completion` or `chat.completion` object."""
    if request.chat:
        items = [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                  "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
    else:
        items = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                 for i, c in enumerate(choices)]
    return {"id": id, "object": "chat.completion" if request.chat else "text_completion", "created": created,
            "model": model, "choices": items, "usage": usage, "system_fingerprint": None}


def chunk(request: Request, *, id: str, created: int, model: str, index: int | None = None,
          text: str | None = None, finish_reason: str | None = None, role: bool = False,
          usage: dict | None = None) -> dict:
    """One stream chunk: a choice's role (chat), text, or finish reason; or (index None) the usage chunk."""
    choices = []
    if index is not None:
        if request.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choices.append({"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason})
        else:
            choices.append({"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason})
    return {"id": id, "object": "chat.completion.chunk" if request.chat else "text_completion", "created": created,
            "model": model, "choices": choices, "usage": usage, "system_fingerprint": None}


def server_sent_event(data: dict | str) -> bytes:
    """`data: <json>` and a blank line (or the literal `data: [DONE]`)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
