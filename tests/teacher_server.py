"""A real OpenAI-compatible HTTP server on 127.0.0.1 for the teacher tests and benchmark.

Serves POST /v1/completions and /v1/chat/completions over HTTP/1.1
keep-alive on port 0, from an asyncio event loop in a thread of its own: one
loop, not a thread per connection, so the fixture spends little CPU a request
and scripts/bench_teacher.py measures the client rather than the fixture (a
threaded http.server cost 0.54-0.68 ms a request at 256 in flight, more than
the client).

Answers are a deterministic function of the prompt (and the sample index
when temperature > 0): a well-formed chain-of-thought answer in the data layer's phrasing for
the question at the end of the prompt, sometimes running on into a further
"Q: ..." (like the paper's PaLM completions), sometimes with no answer at all.

Faults are injected per request by `fault(prompt_key, attempt)` where
`attempt` counts earlier requests for the same prompt: 429 with Retry-After,
500, malformed JSON, a dropped connection, or a slow response that outlives
the client's timeout. The server counts requests and successful answers per
prompt and keeps request timestamps, so tests can check retries, pacing and
"no prompt answered twice".
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import http
import json
import re
import threading
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Fault:
    """kind: "429" | "500" | "malformed" | "drop" | "slow"."""

    kind: str
    retry_after: float | str | None = None  # for 429 (a str is sent as it is, e.g. "soon")
    seconds: float = 0.0  # for slow: how long to stall before dropping


FaultFn = Callable[[str, int], Fault | None]


def prompt_key(prompt) -> str:
    """sha256 of a completion prompt (str) or chat messages (list)."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def last_question(prompt) -> str:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    question = text.rsplit("Q: ", 1)[-1]
    return question.rsplit("\nA:", 1)[0].strip()


def _nli_answer(h: int, answer_line: bool) -> str:
    label = ("entailment", "neutral", "contradiction")[h % 3]
    rationale = "The hypothesis follows from the premise only in part; judging both."
    return f"{rationale}\nAnswer: {label}" if answer_line else f"{rationale} So the answer is {label}."


def _choice_answer(h: int, choices: list[tuple[str, str]]) -> str:
    letter, choice = choices[h % len(choices)]
    return (f"The answer must fit the question. Of the above choices, only {choice} fits."
            f" So the answer is ({letter}) {choice}.")


def _equation_answer(h: int, question: str) -> str:
    numbers = re.findall(r"\d+(?:\.\d+)?", question) or ["1"]
    if len(numbers) == 1:
        return f"There is only {numbers[0]} to use. The answer is ({numbers[0]})."
    a, b = numbers[h % len(numbers)], numbers[(h // 7 + 1) % len(numbers)]
    op = "+-*/"[h // 3 % 4]
    return f"We combine {a} and {b}. {a} {op} {b} is the result. The answer is ({a} {op} {b})."


def answer_for(prompt, sample: int = 0) -> str:
    """The completion the server gives for `prompt` (deterministic)."""
    h = int(prompt_key(prompt)[:12], 16) + 7919 * sample
    question = last_question(prompt)
    full = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    choices = re.findall(r"^\(([a-e])\)\s*(.+)$", question, flags=re.MULTILINE)
    if h % 16 == 5:
        return "I am not sure how to approach this one without more information."
    if "Hypothesis:" in question:  # answer in the phrasing the prompt's exemplars use
        text = _nli_answer(h, answer_line="\nAnswer: " in full)
    elif choices:
        text = _choice_answer(h, choices)
    elif "So the answer is negative" in full:  # the generic exemplars
        text = f"Judging by its words. So the answer is {('positive', 'negative')[h % 2]}."
    else:
        text = _equation_answer(h, question)
    if h % 4 == 1:  # run on into the next few-shot question, like the paper's completions
        text += "\n\nQ: Tom has 3 apples and buys 2 more. How many apples does he have?\nA: 3 + 2 = 5. The answer is"
    return text


def completion_body(request: dict, *, chat: bool, answer: Callable[[object, int], str] = answer_for,
                    usage: tuple[int, int] | None = None) -> dict:
    """The (chat) completion response to a request body, as an OpenAI-compatible server sends it.

    Usage counts words (prompt JSON, answers) unless `usage` fixes (prompt, completion) tokens per request.
    """
    prompt = request["messages"] if chat else request["prompt"]
    n = int(request.get("n", 1))
    sampled = float(request.get("temperature", 0.0)) > 0
    texts = [answer(prompt, i if sampled else 0) for i in range(n)]
    prompt_tokens, completion_tokens = usage or (len(json.dumps(prompt).split()), sum(len(t.split()) for t in texts))
    choices = [({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"} if chat
                else {"index": i, "text": t, "finish_reason": "stop"}) for i, t in enumerate(texts)]
    return {"id": "cmpl-" + prompt_key(prompt)[:8], "object": "chat.completion" if chat else "text_completion",
            "model": request.get("model"), "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class TeacherServer:
    """Start with `with TeacherServer(...) as server:`; `server.base_url` ends in /v1.

    `answer(prompt, sample)` makes the completion text (default `answer_for`);
    `usage` fixes the (prompt, completion) tokens every answer reports.
    `answer_budget`: answer at most this many requests, then hold every
    further one until `release` is set; a held request whose client has
    gone by then is dropped unanswered. Lets a test stop the answers at
    exactly K, kill the client, and know no answer was in flight.
    """

    def __init__(self, *, latency: float = 0.0, fault: FaultFn | None = None, api_key: str | None = None,
                 answer_budget: int | None = None, answer: Callable[[object, int], str] = answer_for,
                 usage: tuple[int, int] | None = None) -> None:
        self.answer = answer
        self.usage = usage
        self.latency = latency
        self.fault = fault
        self.api_key = api_key
        self.answer_budget = answer_budget
        self.release = threading.Event()
        self.lock = threading.Lock()  # the counters are read from the test's thread
        self.requests: collections.Counter[str] = collections.Counter()
        self.answers: collections.Counter[str] = collections.Counter()
        self.timestamps: list[float] = []
        self._port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._connections: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=1024)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one keep-alive connection, in order, until either side closes it."""
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
                    method, path, _ = request_line.split(" ", 2)
                    headers = {}
                    for line in lines:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    body = await reader.readexactly(int(headers.get("content-length", 0)))
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
                    return  # the client went away, or sent something that is not HTTP/1.1
                if not await self._respond(method, path, headers, body, reader, writer):
                    return
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            writer.close()
            self._connections.discard(task)

    async def _respond(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be dropped."""
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            with self.lock:
                self.requests[path] += 1
            _send(writer, 404, b'{"error": "not found"}')
            return True
        chat = path.endswith("chat/completions")
        try:
            request = json.loads(raw)
            prompt = request["messages"] if chat else request["prompt"]
        except (ValueError, KeyError, TypeError):
            _send(writer, 400, b'{"error": "request body is not a completion request"}')
            return True
        key = prompt_key(prompt)
        with self.lock:
            attempt = self.requests[key]
            self.requests[key] += 1
            self.timestamps.append(time.monotonic())
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            # Echo the presented header, as some servers do: the client must redact it.
            _send(writer, 401, json.dumps({"error": f"bad key: {headers.get('authorization')}"}).encode())
            return True
        fault = self.fault(key, attempt) if self.fault else None
        if fault is not None:
            return await _apply(fault, writer)
        if self.latency:
            await asyncio.sleep(self.latency)
        if not self._take_answer_slot():
            while not self.release.is_set():  # held: the test kills the client meanwhile
                await asyncio.sleep(0.02)
        if reader.at_eof() or writer.is_closing():
            return False  # the client has gone (e.g. killed while this was held): drop it unanswered
        body = completion_body(request, chat=chat, answer=self.answer, usage=self.usage)
        _send(writer, 200, json.dumps(body).encode())
        with self.lock:
            self.answers[key] += 1
        return True

    def _take_answer_slot(self) -> bool:
        with self.lock:
            if self.answer_budget is None:
                return True
            if self.answer_budget > 0:
                self.answer_budget -= 1
                return True
            return False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def __enter__(self) -> "TeacherServer":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the loopback teacher server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _send(writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n")
    writer.write(head.encode("latin-1") + body)


async def _apply(fault: Fault, writer: asyncio.StreamWriter) -> bool:
    """Serve the fault; False when the connection is to be dropped."""
    if fault.kind == "429":
        value = fault.retry_after
        headers = {} if value is None else {"Retry-After": value if isinstance(value, str) else f"{value:g}"}
        _send(writer, 429, b'{"error": "rate limited"}', headers)
    elif fault.kind == "500":
        _send(writer, 500, b'{"error": "internal error"}')
    elif fault.kind == "malformed":
        _send(writer, 200, b'{"choices": [{"text": "trunc')
    elif fault.kind in ("drop", "slow"):
        await asyncio.sleep(fault.seconds)
        return False  # no response at all: the client sees the connection drop
    else:
        raise ValueError(f"unknown fault {fault.kind!r}")
    return True


def hashed_faults(*, faulty_every: int = 3, failing_every: int = 0, retry_after: float = 0.01,
                  slow_seconds: float = 0.6) -> FaultFn:
    """A fault schedule keyed by prompt hash: deterministic across runs and processes.

    Prompts with hash % faulty_every == 0 get one fault on their first attempt
    (the kind cycles through 429/500/malformed/drop/slow by hash); with
    failing_every > 0, prompts with hash % failing_every == 1 get a 500 on
    every attempt (they must end recorded as failed).
    """
    kinds = ("429", "500", "malformed", "drop", "slow")

    def fault(key: str, attempt: int) -> Fault | None:
        h = int(key[:12], 16)
        if failing_every and h % failing_every == 1:
            return Fault("500")
        if h % faulty_every == 0 and attempt == 0:
            kind = kinds[h // faulty_every % len(kinds)]
            return Fault(kind, retry_after=retry_after if kind == "429" else None,
                         seconds=slow_seconds if kind == "slow" else 0.0)
        return None

    return fault

