"""The engine against a raw asyncio server that writes crafted bytes, fuzzed with hypothesis.

Chunked, content-length and read-until-close bodies, 1xx answers before the real one,
``Connection: close``, reads split anywhere, and hostile answers (garbage, huge or endless
headers and bodies): each ends as a response or an :class:`EngineError`, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_attribution.transports.engine import (
    AttemptTimeout,
    ConnectionClosed,
    Engine,
    EngineError,
    Limits,
    ProtocolError,
    Response,
    ResponseTooLarge,
)
from asgi_attribution.transports.engine.connection import Connection

#: What the server does for request n: bytes to write (in these pieces), then maybe close.
Script = Callable[[int, bytes], "Answer"]
LIMITS = Limits(max_header_bytes=4096, max_headers=20, max_body_bytes=20_000)
pytestmark = pytest.mark.anyio
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Answer:
    pieces: Sequence[bytes] = ()
    close: bool = False
    endless: bytes = b""  # then write this forever (until the client goes away)


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve ``script`` on 127.0.0.1; yield the base URL and the requests seen per connection."""
    counter = itertools.count()
    per_connection: list[int] = []
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        index = len(per_connection)
        per_connection.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?i)content-length: *(\d+)", head)
                body = await reader.readexactly(int(match.group(1)) if match else 0)
                per_connection[index] += 1
                answer = script(next(counter), head + body)
                for piece in answer.pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                while answer.endless:
                    writer.write(answer.endless)
                    await writer.drain()
                if answer.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", per_connection
    finally:
        server.close()
        if handlers:  # each ends once the engine has closed its side
            await asyncio.wait(handlers, timeout=5)
        await server.wait_closed()


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# -- strategies -----------------------------------------------------------------------------

token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda s: s.lower() not in {"content-length", "transfer-encoding", "connection"}
)
value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
headers = st.lists(st.tuples(token, value), max_size=8)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[str, str]], bytes, str, bool]:
    """(wire bytes, status, headers, body, framing, connection close)."""
    status = draw(st.sampled_from([200, 201, 202, 204, 400, 401, 404, 409, 422, 429, 500, 503]))
    hs = draw(headers)
    body = b"" if status == 204 else draw(st.binary(max_size=3000))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    close = framing == "close" or draw(st.booleans())
    wire = b""
    for info in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
        wire += b"HTTP/1.1 %d Info\r\nLink: </a.css>; rel=preload\r\n\r\n" % info
    wire += b"HTTP/1.1 %d Whatever\r\n" % status
    wire += b"".join(f"{k}: {v}\r\n".encode() for k, v in hs)
    if close:
        wire += b"Connection: close\r\n"
    if status == 204:
        wire += b"\r\n"
    elif framing == "length":
        wire += b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        wire += b"Transfer-Encoding: chunked\r\n\r\n"
        rest = body
        while rest:
            n = draw(st.integers(1, max(1, len(rest))))
            ext = draw(st.sampled_from([b"", b";name=value"]))
            wire += b"%x%s\r\n" % (n, ext) + rest[:n] + b"\r\n"
            rest = rest[n:]
        wire += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: t\r\n"])) + b"\r\n"
    else:
        wire += b"\r\n" + body
    return wire, status, hs, body, framing, close


# -- well-formed answers ----------------------------------------------------------------------


@FUZZ
@given(responses(), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_framing_split_anywhere_then_the_next_request(
    response: tuple[bytes, int, list[tuple[str, str]], bytes, str, bool], cuts: list[int]
) -> None:
    wire, status, hs, body, _, close = response
    seen: list[bytes] = []

    def script(n: int, request: bytes) -> Answer:
        seen.append(request)
        if n == 0:
            return Answer(split(wire, cuts), close=close)
        return Answer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])

    async def main() -> tuple[Response, Response, list[int]]:
        async with raw_server(script) as (url, per_connection):
            engine = Engine(url, timeout=5, limits=LIMITS, headers={"Authorization": "Bearer k"})
            try:
                first = await engine.request("POST", "/track/lead", b'{"a":1}', {"K": "v"})
                second = await engine.request("POST", "/track/lead", b"{}")
            finally:
                await engine.aclose()
            return first, second, per_connection

    first, second, per_connection = asyncio.run(main())
    assert first.status == status
    assert first.body == body
    assert [(k.decode(), v.decode()) for k, v in first.headers][: len(hs)] == hs
    assert (second.status, second.body) == (200, b"ok")
    # Kept alive unless the server said close (or ended the body by closing).
    assert per_connection == ([1, 1] if close else [2])
    assert seen[0].startswith(b"POST /track/lead HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\nK: v\r\nContent-Length: 7\r\n\r\n" in seen[0]


def test_every_split_point_of_one_answer() -> None:
    """The protocol fed by hand at every byte boundary (and byte by byte), on a real socket."""
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: 1\r\n\r\n"
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for pieces in [*([wire[:i], wire[i:]] for i in range(len(wire) + 1)), list(wire)]:
            ours, theirs = socket.socketpair()
            transport, conn = await loop.create_connection(lambda: Connection(LIMITS), sock=ours)
            waiter: asyncio.Future[Response] = loop.create_future()
            conn.send(b"POST / HTTP/1.1\r\n\r\n", waiter)
            for piece in pieces:  # asyncio never delivers b"": neither do we
                if piece:
                    conn.data_received(bytes([piece]) if isinstance(piece, int) else piece)
            response = await waiter
            assert (response.status, response.body) == (200, b"hello world")
            assert response.headers == [(b"X-A", b"1"), (b"Transfer-Encoding", b"chunked")]
            assert conn.reusable
            transport.close()
            theirs.close()
            await asyncio.sleep(0)

    asyncio.run(main())


# -- hostile answers --------------------------------------------------------------------------


async def outcome(answer: Answer, *, timeout: float = 5.0) -> Response | EngineError:
    async with raw_server(lambda n, request: answer) as (url, _):
        engine = Engine(url, timeout=timeout, limits=LIMITS)
        try:
            return await engine.request("POST", "/x", b"{}")
        except EngineError as error:
            return error
        finally:
            await engine.aclose()


@FUZZ
@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 400), max_size=5))
def test_garbage_is_an_error_never_a_hang(garbage: bytes, cuts: list[int]) -> None:
    result = asyncio.run(outcome(Answer(split(garbage, cuts), close=True)))
    assert isinstance(result, (ProtocolError, ConnectionClosed))


@FUZZ
@given(
    st.binary(max_size=200).map(lambda b: b"HTTP/1.1 200 OK\r\n" + b),
    st.lists(st.integers(0, 300), max_size=5),
)
def test_mangled_heads_are_a_response_or_an_error(head: bytes, cuts: list[int]) -> None:
    result = asyncio.run(outcome(Answer(split(head, cuts), close=True)))
    assert isinstance(result, (Response, ProtocolError, ConnectionClosed))


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (Answer([b"HTTP/1.1 200 OK\r\n"], endless=b"X-Pad: " + b"a" * 1000 + b"\r\n"), "headers"),
        (Answer([b"HTTP/1.1 200 OK\r\nX-Long: "], endless=b"a" * 1000), "headers"),
        (Answer([b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 21 + b"\r\n"]), "more than 20 headers"),
        (  # counted per head: a 1xx answer's own too, split across reads
            Answer([b"HTTP/1.1 103 Hints\r\n" + b"L: 1\r\n" * 21, b"\r\nHTTP/1.1 200 OK\r\n\r\n"]),
            "more than 20 headers",
        ),
        (Answer([b"HTTP/1.1 200 OK\r\nContent-Length: 20001\r\n\r\n" + b"a" * 20001]), "body"),
        (
            Answer(
                [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"], endless=b"1\r\na\r\n"
            ),
            "response over",
        ),  # six bytes of framing per byte of body
        (Answer([b"HTTP/1.1 200 OK\r\n\r\n"], endless=b"a" * 1000), "body"),
        (
            Answer([b"HTTP/1.1 100 Continue\r\n\r\n"], endless=b"HTTP/1.1 103 Hints\r\n\r\n"),
            "response over",
        ),
        (
            Answer(
                [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: "],
                endless=b"a" * 1000,
            ),
            "response over",
        ),
    ],
)
async def test_huge_or_endless_answers_are_bounded(answer: Answer, message: str) -> None:
    result = await outcome(answer, timeout=5.0)
    assert isinstance(result, ResponseTooLarge)
    assert message in str(result)


async def test_headers_up_to_the_limit_pass_whatever_the_lines_around_them() -> None:
    """Line ends in a 1xx answer and in the body (parsed with the head) are not headers."""
    hints = b"HTTP/1.1 103 Hints\r\n" + b"L: 1\r\n" * 20 + b"\r\n"
    body = b"\n" * 200
    head = b"HTTP/1.1 503 No\r\n" + b"X: 1\r\n" * 18 + b"Retry-After: 7\r\n"
    wire = hints + head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    result = await outcome(Answer([wire]), timeout=5.0)
    assert isinstance(result, Response), result
    assert (result.status, result.body, result.header(b"retry-after")) == (503, body, "7")
    assert len(result.headers) == 20 and result.headers[-1] == (b"Content-Length", b"200")


async def test_a_stalled_answer_times_out_and_the_engine_recovers() -> None:
    answers = iter([Answer([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])])

    def script(n: int, request: bytes) -> Answer:
        return next(answers, Answer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]))

    async with raw_server(script) as (url, per_connection):
        engine = Engine(url, timeout=0.3, limits=LIMITS)
        with pytest.raises(AttemptTimeout):
            await engine.request("POST", "/x", b"{}")
        assert (await engine.request("POST", "/x", b"{}")).body == b"ok"
        await engine.aclose()
    assert per_connection == [1, 1]  # the stalled connection was dropped, not reused


async def test_a_keepalive_connection_closed_unread_is_resent_at_once() -> None:
    """The server closes a kept-alive connection as our second request arrives: resent."""

    def script(n: int, request: bytes) -> Answer:
        if n == 1:
            return Answer(close=True)  # read, closed, never answered
        return Answer([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(n)), n)])

    async with raw_server(script) as (url, per_connection):
        engine = Engine(url, timeout=5, limits=LIMITS)
        assert (await engine.request("POST", "/x", b"{}", {"Idempotency-Key": "e1"})).body == b"0"
        assert (await engine.request("POST", "/x", b"{}", {"Idempotency-Key": "e2"})).body == b"2"
        await engine.aclose()
    assert per_connection == [2, 1]


async def test_a_fresh_connection_closed_unanswered_is_an_error() -> None:
    result = await outcome(Answer(close=True))
    assert isinstance(result, ConnectionClosed)
    assert result.retryable


async def test_a_second_unsolicited_response_drops_the_connection() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(lambda n, r: Answer([ok + ok])) as (url, per_connection):
        engine = Engine(url, timeout=5, limits=LIMITS)
        first = await engine.request("POST", "/x", b"{}")
        second = await engine.request("POST", "/x", b"{}")
        await engine.aclose()
    assert first.status == 200
    assert isinstance(second, Response)
    assert len(per_connection) == 2


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Engine("http://h", headers={"A": "1\r\nB: 2"})
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Engine("http://h").encode("POST", "/x", b"", {"Idempotency-Key": "k\n"})
    with pytest.raises(ValueError, match="invalid request line"):
        Engine("http://h").encode("POST", "/x y", b"", {})
