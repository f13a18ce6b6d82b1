"""The lean HTTP/1.1 client (distill/teacher/backends/http1.py) against scripted replies on 127.0.0.1.

Each test's server answers the n-th request it reads with `replies[n]`:
raw bytes, so every framing a real server may use is exercised exactly.
"""
import asyncio
import gzip
import json
import pathlib
import ssl
import zlib

import pytest

from distill.errors import UserError
from distill.teacher.backends import http1
from distill.teacher.backends.base import RequestError, SamplingParams
from distill.teacher.backends.openai_http import OpenAIBackend

CLOSE = b"<close>"  # instead of a reply: close the connection without answering
STALL = b"<stall>"  # instead of a reply: wait a second, then answer {}


def _reply(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def _sized(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    return _reply(body, f"Content-Length: {len(body)}", *headers, status=status)


async def _serve(replies: list[bytes], seen: list[bytes]):
    """A server that records each request (head + body) and sends the scripted reply."""
    script = iter(replies)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                seen.append(head + await reader.readexactly(length))
                reply = next(script)
                if reply == CLOSE:
                    break
                if reply == STALL:
                    await asyncio.sleep(1)
                    reply = _sized(b"{}")
                writer.write(reply)
                await writer.drain()
                if b"Connection: close" in reply or b"Content-Length" not in reply and b"chunked" not in reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


def _exchange(replies: list[bytes], posts: int, *, max_body_bytes: int = 1 << 20, headers=None):
    """(responses or exceptions, requests the server saw, connections opened) for `posts` sequential POSTs."""
    seen: list[bytes] = []

    async def main():
        server, url = await _serve(replies, seen)
        origin = http1.Origin(url, headers=headers or {"Content-Type": "application/json"})
        connects = 0
        real_connect = origin._connect

        async def counting_connect():
            nonlocal connects
            connects += 1
            return await real_connect()

        origin._connect = counting_connect
        results = []
        async with server:
            for i in range(posts):
                try:
                    results.append(await origin.post("/completions", b'{"i": %d}' % i, max_body_bytes=max_body_bytes))
                except (http1.ConnectionFailed, http1.ReplyTooLarge) as err:
                    results.append(err)
            await origin.aclose()
        return results, connects

    results, connects = asyncio.run(main())
    return results, seen, connects


def test_keep_alive_reuses_one_connection_and_the_request_is_well_formed():
    results, seen, connects = _exchange([_sized(b'{"a": 1}'), _sized(b'{"a": 2}')], 2,
                                        headers={"Content-Type": "application/json", "Authorization": "Bearer k"})
    assert [r.body for r in results] == [b'{"a": 1}', b'{"a": 2}'] and connects == 1
    head, body = seen[0].split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/completions HTTP/1.1" and body == b'{"i": 0}'
    assert {b"Content-Length: 8", b"Authorization: Bearer k", b"Content-Type: application/json"} <= set(lines)
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in lines)


def test_chunked_gzip_and_read_until_close_replies_are_decoded():
    packed = gzip.compress(b'{"zipped": true}')
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (b'{"chu', b'nked": 1}')) + b"0\r\n\r\n"
    results, _, connects = _exchange([
        _sized(packed, "Content-Encoding: gzip"),
        _reply(chunked, "Transfer-Encoding: chunked"),
        _sized(zlib.compress(b'{"deflated": 1}'), "Content-Encoding: deflate"),
        _reply(b'{"until": "close"}'),  # no length: the body ends when the server closes
        _sized(b"{}"),
    ], 5)
    assert [r.body for r in results] == [b'{"zipped": true}', b'{"chunked": 1}', b'{"deflated": 1}',
                                         b'{"until": "close"}', b"{}"]
    assert connects == 2  # a new connection only after the read-until-close reply


def test_error_statuses_are_returned_with_their_headers():
    results, _, _ = _exchange([_sized(b'{"error": "slow down"}', "Retry-After: 7", status="429 Too Many Requests")], 1)
    assert results[0].status == 429 and results[0].headers["retry-after"] == "7"


def test_connection_close_is_honoured():
    results, _, connects = _exchange([_sized(b"{}", "Connection: close"), _sized(b"{}")], 2)
    assert [r.status for r in results] == [200, 200] and connects == 2


def test_a_reused_connection_closed_by_the_server_is_replaced_once_without_an_error():
    results, seen, connects = _exchange([_sized(b"{}"), CLOSE, _sized(b'{"again": 1}')], 2)
    assert [r.body for r in results] == [b"{}", b'{"again": 1}'] and connects == 2 and len(seen) == 3


def test_a_fresh_connection_closed_without_a_reply_fails():
    results, _, _ = _exchange([CLOSE], 1)
    assert isinstance(results[0], http1.ConnectionFailed) and "closed the connection" in str(results[0])


def test_a_reply_cut_short_fails():
    results, _, _ = _exchange([_reply(b'{"cut', "Content-Length: 100", "Connection: close")], 1)
    assert isinstance(results[0], http1.ConnectionFailed)


@pytest.mark.parametrize("reply, kind, words", [
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", http1.ConnectionFailed, "not HTTP/1.1"),
    (_sized(b"x" * 5000), http1.ReplyTooLarge, "larger than 4,096 bytes"),
    (_sized(gzip.compress(b"0" * 10_000_000), "Content-Encoding: gzip"), http1.ReplyTooLarge, "larger than 4,096"),
    (_sized(b"{}", "X-Padding: " + "p" * 70_000), http1.ReplyTooLarge, "headers are larger"),
    (_sized(b"{}", "Content-Encoding: br"), http1.ConnectionFailed, "'br'"),
    (_sized(b"not gzip at all", "Content-Encoding: gzip"), http1.ConnectionFailed, "does not decompress"),
])
def test_garbage_and_oversized_replies_are_refused(reply, kind, words):
    results, _, _ = _exchange([reply, _sized(b"{}")], 2, max_body_bytes=4096)
    assert isinstance(results[0], kind) and words in str(results[0])
    assert results[1].status == 200  # the broken connection was dropped, the next request got a new one


def test_a_request_cancelled_mid_reply_does_not_leave_its_connection_in_the_pool():
    seen: list[bytes] = []

    async def main():
        server, url = await _serve([STALL, _sized(b'{"next": 1}')], seen)
        origin = http1.Origin(url, headers={})
        async with server:
            task = asyncio.ensure_future(origin.post("/completions", b"{}", max_body_bytes=100))
            while not seen:  # the request has reached the server; its reply is a second away
                await asyncio.sleep(0.01)
            task.cancel()  # what the batcher's per-attempt timeout does
            with pytest.raises(asyncio.CancelledError):
                await task
            idle_after_cancel = list(origin._idle)
            response = await origin.post("/completions", b"{}", max_body_bytes=100)
            await origin.aclose()
        return idle_after_cancel, response

    idle_after_cancel, response = asyncio.run(main())
    assert idle_after_cancel == [] and response.body == b'{"next": 1}'  # not the stalled reply


def test_the_backend_maps_client_failures_to_request_errors():
    async def main():
        server, url = await _serve([_sized(b"y" * 500), CLOSE], [])
        backend = OpenAIBackend(base_url=url, model="m", api_key=None, max_response_bytes=100)
        errors = []
        async with server:
            for _ in range(2):
                with pytest.raises(RequestError) as caught:
                    await backend.generate("Q: x\nA:", SamplingParams())
                errors.append(caught.value)
            await backend.aclose()
        return errors

    too_large, dropped = asyncio.run(main())
    assert "larger than 100 bytes" in str(too_large) and "--max-response-bytes" in str(too_large)
    assert not too_large.retryable and dropped.retryable


@pytest.mark.parametrize("url", ["http://", "http://:80/v1"])
def test_a_base_url_without_a_host_is_a_user_error(url):
    with pytest.raises(UserError, match="--base-url"):
        OpenAIBackend(base_url=url, model="m", api_key=None)


TLS = pathlib.Path(__file__).parent / "tls"


async def _tls_server():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS / "server.pem", TLS / "server.key")
    body = json.dumps({"choices": [{"index": 0, "text": "over TLS"}]}).encode()

    async def connection(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(_sized(body))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=context)
    return server, f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


def test_https_verifies_the_server_certificate(monkeypatch):
    """Trusted through SSL_CERT_FILE (as httpx's context reads it) it answers; untrusted it fails at once."""
    async def main():
        server, url = await _tls_server()
        async with server:
            untrusted = OpenAIBackend(base_url=url, model="m", api_key=None)
            with pytest.raises(RequestError, match="CERTIFICATE_VERIFY_FAILED") as caught:
                await untrusted.generate("Q: x\nA:", SamplingParams())
            assert not caught.value.retryable  # a rejected certificate will not mend on a retry
            await untrusted.aclose()
            monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "ca.pem"))
            trusted = OpenAIBackend(base_url=url, model="m", api_key=None)
            completions = [await trusted.generate("Q: x\nA:", SamplingParams()) for _ in range(2)]
            await trusted.aclose()
        return completions

    assert [c.texts for c in asyncio.run(main())] == [("over TLS",), ("over TLS",)]
