"""A real OpenAI-compatible HTTP server on 127.0.0.1 for the teacher tests and benchmark.

Serves POST /v1/completions and /v1/chat/completions from a thread pool
(ThreadingHTTPServer, HTTP/1.1 keep-alive, port 0). Answers are a
deterministic function of the prompt (and the sample index when temperature
> 0): a well-formed chain-of-thought answer in the data layer's phrasing for
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

import collections
import dataclasses
import hashlib
import http.server
import json
import re
import socket
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


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; no delayed-ACK stalls
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        owner: TeacherServer = self.server.owner
        try:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except ValueError:
            self._send(400, b'{"error": "request body is not JSON"}')
            return
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            with owner.lock:
                owner.requests[self.path] += 1
            self._send(404, b'{"error": "not found"}')
            return
        chat = self.path.endswith("chat/completions")
        prompt = request["messages"] if chat else request["prompt"]
        key = prompt_key(prompt)
        with owner.lock:
            attempt = owner.requests[key]
            owner.requests[key] += 1
            owner.timestamps.append(time.monotonic())
        if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            # Echo the presented header, as some servers do: the client must redact it.
            self._send(401, json.dumps({"error": f"bad key: {self.headers.get('Authorization')}"}).encode())
            return
        fault = owner.fault(key, attempt) if owner.fault else None
        if fault is not None and self._apply(fault):
            return
        if owner.latency:
            time.sleep(owner.latency)
        if not owner.take_answer_slot():
            owner.release.wait()  # held: the test kills the client meanwhile
            if not self._peer_alive():
                self.close_connection = True
                return
        body = completion_body(request, chat=chat, answer=owner.answer, usage=owner.usage)
        self._send(200, json.dumps(body).encode())
        with owner.lock:
            owner.answers[key] += 1

    def _peer_alive(self) -> bool:
        """False when the client has closed the connection (e.g. it was killed)."""
        sock = self.connection
        sock.setblocking(False)
        try:
            return bool(sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return True  # open, nothing to read
        except OSError:
            return False
        finally:
            sock.setblocking(True)

    def _apply(self, fault: Fault) -> bool:
        """Serve the fault; True when the request is finished."""
        if fault.kind == "429":
            value = fault.retry_after
            headers = {} if value is None else {"Retry-After": value if isinstance(value, str) else f"{value:g}"}
            self._send(429, b'{"error": "rate limited"}', headers)
        elif fault.kind == "500":
            self._send(500, b'{"error": "internal error"}')
        elif fault.kind == "malformed":
            self._send(200, b'{"choices": [{"text": "trunc')
        elif fault.kind in ("drop", "slow"):
            time.sleep(fault.seconds)
            self.close_connection = True  # no response at all: the client sees the connection drop
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")
        return True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of concurrent connects must not hit the listen backlog
    owner: "TeacherServer"

    def handle_error(self, request, client_address) -> None:
        pass  # resets from faults and killed clients are expected; stay quiet


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
        self.lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        self.answers: collections.Counter[str] = collections.Counter()
        self.timestamps: list[float] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def take_answer_slot(self) -> bool:
        with self.lock:
            if self.answer_budget is None:
                return True
            if self.answer_budget > 0:
                self.answer_budget -= 1
                return True
            return False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "TeacherServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


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

