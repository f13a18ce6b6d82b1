"""A lean HTTP/1.1 client for one origin: keep-alive POSTs over asyncio streams.

The online teacher keeps hundreds of small POSTs in flight to one server.
httpx/httpcore spent 1.65 ms of CPU a request at 256 in flight
(scripts/bench_teacher.py) in layers this traffic never uses (connection-pool
bookkeeping, per-request locks, header models), and that capped the rate
below what the server could give. Here a request is one `write` of bytes
built from a template, and the reply is parsed by httptools (the C parser
uvicorn uses, already a dependency for `distill serve`).

What it does is what the backend needs: http and https, one connection per
request in flight (reused while the server keeps it alive, so connections
never outnumber requests in flight), Content-Length, chunked and
read-until-close replies, gzip and deflate bodies. Everything the server
controls is bounded: header bytes, and body bytes after decoding (a
compressed bomb stops at the limit). A broken connection, a reply that is
not HTTP/1.1 or that passes a bound raises; an HTTP error status is returned.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ssl
import urllib.parse
import zlib

import httptools

MAX_HEADER_BYTES = 64 << 10  # real replies send a few hundred bytes of headers
READ_SIZE = 64 << 10


class ConnectionFailed(Exception):
    """The connection could not be made, broke mid-reply, or carried something that is not HTTP/1.1.

    `retryable` is False only for a server certificate that failed verification: that will not mend.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ReplyTooLarge(Exception):
    """The reply's headers or (decoded) body passed their bound."""


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes  # decoded (Content-Encoding undone)


class _Reply:
    """httptools' callbacks for one response: collects status, headers and the bounded body."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.chunks: list[bytes] = []
        self.body_bytes = 0
        self.decoder: zlib._Decompress | None = None
        self.headers_done = False
        self.keep_alive = False
        self.done = False
        self.error: Exception | None = None  # raised from a callback; httptools wraps it
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES:
            self.error = ReplyTooLarge(f"reply headers are larger than {MAX_HEADER_BYTES:,} bytes")
            raise self.error
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()  # only meaningful inside the callbacks
        encoding = self.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self.decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or zlib header, detected
        elif encoding != "identity":
            self.error = ConnectionFailed(f"reply uses Content-Encoding {encoding!r}; only gzip and deflate are read")
            raise self.error

    def on_body(self, data: bytes) -> None:
        if self.decoder is not None:
            try:  # never inflate more than one byte past the limit
                data = self.decoder.decompress(data, self.max_body_bytes - self.body_bytes + 1)
            except zlib.error as err:
                self.error = ConnectionFailed(f"reply body does not decompress: {err}")
                raise self.error from None
        self.body_bytes += len(data)
        if self.body_bytes > self.max_body_bytes:
            self.error = ReplyTooLarge(f"reply is larger than {self.max_body_bytes:,} bytes")
            raise self.error
        self.chunks.append(data)

    def on_message_complete(self) -> None:
        self.done = True

    def ends_at_close(self) -> bool:
        """True when the reply has no length and no chunking: its body is whatever came before EOF."""
        return self.headers_done and "content-length" not in self.headers and "transfer-encoding" not in self.headers


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class Origin:
    """POSTs to paths on one http(s)://host[:port] with fixed headers, over reused connections."""

    def __init__(self, base_url: str, *, headers: dict[str, str], ssl_context: ssl.SSLContext | None = None) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self.prefix = url.path.rstrip("/")
        default_port = self.port == (443 if self.ssl else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        fixed = {"Host": host if default_port else f"{host}:{self.port}", "User-Agent": "distill",
                 "Accept": "application/json", "Accept-Encoding": "gzip, deflate", **headers}
        for name, value in fixed.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"header {name} contains a line break or NUL")
        self._fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._idle: list[_Connection] = []
        self._closed = False

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=READ_SIZE,
                                                           server_hostname=self.host if self.ssl else None)
        except OSError as err:  # ssl.SSLError included
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {err}",
                                   retryable=not isinstance(err, ssl.SSLCertVerificationError)) from None
        return _Connection(reader, writer)

    async def post(self, path: str, body: bytes, *, max_body_bytes: int) -> Response:
        """Send `body` to prefix + `path`; the response, its body at most `max_body_bytes` once decoded.

        A connection that was idle in the pool and turns out closed by the
        server before any byte of the reply came is replaced once (servers
        close idle keep-alive connections whenever they like).
        """
        request = (f"POST {self.prefix}{path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n".encode("latin-1")
                   + self._fixed_headers + b"\r\n" + body)
        while self._idle:
            connection = self._idle.pop()
            if connection.reader.at_eof():
                connection.close()
                continue
            reply = await self._exchange(connection, request, max_body_bytes, reused=True)
            if reply is not None:
                return reply
            break
        reply = await self._exchange(await self._connect(), request, max_body_bytes, reused=False)
        assert reply is not None
        return reply

    async def _exchange(self, connection: _Connection, request: bytes, max_body_bytes: int,
                        *, reused: bool) -> Response | None:
        """One request and its reply; None when a reused connection closed before replying."""
        reply = _Reply(max_body_bytes)
        received = 0
        try:
            connection.writer.write(request)
            while not reply.done:
                data = await connection.reader.read(READ_SIZE)
                if not data:
                    if reply.ends_at_close():
                        break
                    if reused and received == 0:
                        connection.close()
                        return None
                    raise ConnectionFailed("server closed the connection before the reply ended")
                received += len(data)
                try:
                    reply.parser.feed_data(data)
                except httptools.HttpParserCallbackError:
                    raise reply.error from None
                except httptools.HttpParserError as err:
                    raise ConnectionFailed(f"reply is not HTTP/1.1: {err}") from None
                if not reply.headers_done and received > MAX_HEADER_BYTES:
                    raise ReplyTooLarge(f"reply headers are larger than {MAX_HEADER_BYTES:,} bytes")
        except OSError as err:
            connection.close()
            raise ConnectionFailed(f"connection to {self.host}:{self.port} failed: {err}") from None
        except BaseException:  # a bound, a protocol error, or a timeout's cancellation: state unknown
            connection.close()
            raise
        body = b"".join(reply.chunks)
        if reply.decoder is not None:
            body += reply.decoder.flush()
            if len(body) > max_body_bytes:
                connection.close()
                raise ReplyTooLarge(f"reply is larger than {max_body_bytes:,} bytes")
        if reply.done and reply.keep_alive and not self._closed:
            self._idle.append(connection)
        else:
            connection.close()
        return Response(reply.parser.get_status_code(), reply.headers, body)

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
