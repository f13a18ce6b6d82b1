"""A real loopback fake of the OpenAI Batch API (files + batches) for the teacher's batch tests.

Serves, on 127.0.0.1 from a thread pool:

    POST /v1/files                 multipart (purpose=batch, file=JSONL) -> file object
    POST /v1/batches               {input_file_id, endpoint, completion_window} -> batch object
    GET  /v1/batches/{id}          the batch object; each GET serves it, then moves it one step:
                                   validating -> in_progress -> finalizing -> <outcome>
                                   (it stays in_progress while `hold` is set)
    GET  /v1/batches?limit&after   the list, newest first (has_more / last_id paging)
    GET  /v1/files/{id}/content    a file's bytes (inputs, outputs, error files)

When a batch finishes, its output file holds one line per answered request
(`{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error": null}`),
with the body the online fake would send (teacher_server.completion_body), and its
error file one line per failed request. Per request `line_fault(custom_id, batch_number, line_index)`
may return "error" (an error-file entry), "http_400" (an error-file entry with a
non-200 response), "malformed" (a garbled output line) or "missing" (no line at all).
Per batch `outcome(batch_number)` is "completed", "expired" / "cancelled" (only the
first half of the requests answered), or "failed" (validation failed, no output).

Counters let tests check what the client did: `created` batches, `uploads`
(the parsed input lines of each file, with its size), `answers` per custom_id,
and `statuses[batch_id]`, the statuses served in order. `flaky_polls` makes that
many GETs of a batch answer 503 first (the client must retry).
"""
from __future__ import annotations

import collections
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable

from teacher_server import answer_for, completion_body

LineFault = Callable[[str, int, int], str | None]


def _parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """{field name: value bytes} of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    fields = {}
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value[:-2] if value.endswith(b"\r\n") else value
    return fields


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, value) -> None:
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        owner = self.server.owner
        if owner.api_key is None or self.headers.get("Authorization") == f"Bearer {owner.api_key}":
            return True
        # Echo the presented header, as some servers do: the client must redact it.
        self._send(401, {"error": {"message": f"bad key: {self.headers.get('Authorization')}"}})
        return False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self._authorized():
            return
        owner = self.server.owner
        if self.path == "/v1/files":
            fields = _parse_multipart(body, self.headers["Content-Type"])
            if fields.get("purpose") != b"batch":
                self._send(400, {"error": {"message": "purpose must be batch"}})
                return
            self._send(200, owner.add_file(fields["file"], purpose="batch"))
        elif self.path == "/v1/batches":
            request = json.loads(body)
            self._send(*owner.create(request))
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_GET(self) -> None:
        if not self._authorized():
            return
        owner = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts[:2] == ["v1", "batches"] and len(parts) == 3:
            self._send(*owner.poll(parts[2]))
        elif parts == ["v1", "batches"]:
            query = dict(urllib.parse.parse_qsl(url.query))
            self._send(200, owner.listing(int(query.get("limit", 20)), query.get("after")))
        elif parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
            with owner.lock:
                content = owner.files.get(parts[2])
            self._send(200, content) if content is not None else self._send(404, {"error": {"message": "no file"}})
        else:
            self._send(404, {"error": {"message": "not found"}})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "BatchServer"

    def handle_error(self, request, client_address) -> None:
        pass  # killed clients are expected


class BatchServer:
    """`with BatchServer(...) as server:`; `server.base_url` ends in /v1."""

    def __init__(self, *, api_key: str | None = None, outcome: Callable[[int], str] = lambda number: "completed",
                 line_fault: LineFault | None = None, hold: bool = False, flaky_polls: int = 0,
                 usage: tuple[int, int] | None = None, answer: Callable[[object, int], str] = answer_for) -> None:
        self.api_key, self.outcome, self.line_fault = api_key, outcome, line_fault
        self.hold, self.flaky_polls, self.usage, self.answer = hold, flaky_polls, usage, answer
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.uploads: list[dict] = []  # {"id", "bytes", "lines": [parsed request lines]}
        self.batches: dict[str, dict] = {}
        self.order: list[str] = []  # batch ids, oldest first
        self.statuses: dict[str, list[str]] = collections.defaultdict(list)
        self.answers: collections.Counter[str] = collections.Counter()
        self._polls: collections.Counter[str] = collections.Counter()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def created(self) -> int:
        with self.lock:
            return len(self.order)

    def add_file(self, content: bytes, *, purpose: str) -> dict:
        with self.lock:
            file_id = f"file-{len(self.files) + 1:04d}"
            self.files[file_id] = content
            if purpose == "batch":
                lines = [json.loads(line) for line in content.decode("utf-8").split("\n") if line.strip()]
                self.uploads.append({"id": file_id, "bytes": len(content), "lines": lines})
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": "input.jsonl", "purpose": purpose}

    def create(self, request: dict) -> tuple[int, dict]:
        with self.lock:
            if request.get("input_file_id") not in self.files:
                return 400, {"error": {"message": "no such input file"}}
            if request.get("endpoint") not in ("/v1/chat/completions", "/v1/completions") \
                    or request.get("completion_window") != "24h":
                return 400, {"error": {"message": "bad endpoint or completion_window"}}
            batch_id = f"batch_{len(self.order) + 1:04d}"
            lines = next(u["lines"] for u in self.uploads if u["id"] == request["input_file_id"])
            if any(line["url"] != request["endpoint"] or line["method"] != "POST" for line in lines):
                return 400, {"error": {"message": "a line's url or method does not match the batch"}}
            batch = {"id": batch_id, "object": "batch", "endpoint": request["endpoint"], "errors": None,
                     "input_file_id": request["input_file_id"], "completion_window": "24h",
                     "status": "validating", "output_file_id": None, "error_file_id": None,
                     "created_at": int(time.time()), "metadata": None,
                     "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
            self.batches[batch_id] = batch
            self.order.append(batch_id)
            self.statuses[batch_id].append("validating")
            return 200, dict(batch)

    def poll(self, batch_id: str) -> tuple[int, dict]:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, {"error": {"message": "no such batch"}}
            self._polls[batch_id] += 1
            if self._polls[batch_id] <= self.flaky_polls:
                return 503, {"error": {"message": "try again"}}
            served = dict(batch)  # serve the current state, then move one step on
            status = batch["status"]
            if status == "validating":
                batch["status"] = "in_progress"
            elif status == "in_progress" and not self.hold:
                batch["status"] = "finalizing"
            elif status == "finalizing":
                self._finish(batch, self.order.index(batch_id))
            self.statuses[batch_id].append(served["status"])
            return 200, served

    def _finish(self, batch: dict, number: int) -> None:
        outcome = self.outcome(number)
        lines = next(u["lines"] for u in self.uploads if u["id"] == batch["input_file_id"])
        if outcome == "failed":
            batch.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "the model does not exist", "line": 1}]})
            return
        answered = lines if outcome == "completed" else lines[: len(lines) // 2]
        outputs, errors = [], []
        for i, line in enumerate(answered):
            key = line["custom_id"]
            fault = self.line_fault(key, number, i) if self.line_fault else None
            record = {"id": f"batch_req_{number}_{i}", "custom_id": key, "error": None}
            if fault == "missing":
                continue
            if fault == "error":
                errors.append({**record, "response": None,
                               "error": {"code": "server_error", "message": "the model crashed on this one"}})
            elif fault == "http_400":
                errors.append({**record, "response": {"status_code": 400, "request_id": f"req_{i}",
                               "body": {"error": {"message": "prompt too long for the context"}}}})
            elif fault == "malformed":
                outputs.append(json.dumps({**record, "response": "x"})[:-25].encode() + b"\xff garbage")
                continue
            else:
                body = completion_body(line["body"], chat=line["url"].endswith("chat/completions"),
                                       answer=self.answer, usage=self.usage)
                outputs.append(json.dumps({**record, "response": {"status_code": 200, "request_id": f"req_{i}",
                                                                   "body": body}}).encode())
                self.answers[key] += 1
        for name, items in (("output_file_id", outputs), ("error_file_id", errors)):
            if items:
                file_id = f"file-{len(self.files) + 1:04d}"
                self.files[file_id] = b"\n".join(i if isinstance(i, bytes) else json.dumps(i).encode()
                                                 for i in items) + b"\n"
                batch[name] = file_id
        batch["status"] = outcome
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs), "failed": len(errors)}

    def listing(self, limit: int, after: str | None) -> dict:
        with self.lock:
            newest = list(reversed(self.order))
            start = newest.index(after) + 1 if after in newest else 0
            page = [dict(self.batches[b]) for b in newest[start : start + limit]]
            return {"object": "list", "data": page, "has_more": start + limit < len(newest),
                    "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}

    def __enter__(self) -> "BatchServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
