"""HTTPTransport's connections and bounds, against real servers on 127.0.0.1.

uvicorn (keep-alive reuse, idle connections it closes), raw asyncio servers that write crafted
or hostile answers (huge, endless, dripping, black-holed connections), and a tiny forward proxy
that ``HTTP_PROXY`` points at: every bound holds on the one path, with or without a proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from asgi_attribution import DUB, DeliveryError, HTTPTransport, LeadEvent
from asgi_attribution.transports import Delivery, TrackResult
from asgi_attribution.transports._http import MAX_ANSWER_BYTES, USER_AGENT

pytestmark = pytest.mark.anyio

KEY = "dub_http_test_key_5e1f"


def lead(user: str = "u1") -> Delivery:
    return Delivery(LeadEvent(click_id="c", event_name="Sign up", customer_external_id=user), DUB)


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxies set on the machine would route these tests elsewhere: only a test sets one."""
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)


# -- uvicorn: keep-alive reuse, and idle connections the server closes --------------------------


#: The headers of each request the echo app got, as it got them.
RECEIVED: list[dict[str, str]] = []


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what it got, and the client port (one port: one connection)."""
    assert scope["type"] == "http"
    RECEIVED.append({k.decode(): v.decode() for k, v in scope["headers"]})
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "port": scope["client"][1],
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "body": body.decode(),
        }
    ).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def uvicorn_url() -> Iterator[str]:
    """The echo app under a real uvicorn in a thread; it closes connections idle for 1 s."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        echo, log_config=None, access_log=False, lifespan="off", timeout_keep_alive=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


async def test_the_request_carries_key_idempotency_key_json_body_and_user_agent(
    uvicorn_url: str,
) -> None:
    transport = HTTPTransport(KEY, base_url=uvicorn_url + "/api")
    delivery = lead()
    try:
        seen = (await transport.attempt(delivery)).response
    finally:
        await transport.aclose()
    assert (seen["method"], seen["path"]) == ("POST", "/api/track/lead")
    assert seen["body"].encode() == delivery.request().body()  # orjson's bytes, as they are
    headers = seen["headers"]
    assert RECEIVED[-1]["authorization"] == f"Bearer {KEY}"
    assert headers["authorization"] == "Bearer [redacted]"  # the echoed key never comes back
    assert headers["idempotency-key"] == delivery.event.event_id
    assert headers["content-type"] == "application/json"
    assert headers["accept-encoding"] == "identity"
    version = importlib.metadata.version("asgi-attribution")
    assert headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith(f"asgi-attribution/{version} ")


async def test_keepalive_reuse_and_idle_connections_closed_by_the_server(uvicorn_url: str) -> None:
    transport = HTTPTransport(KEY, base_url=uvicorn_url, concurrency=3)
    try:
        first = [(await transport.attempt(lead())).response["port"] for _ in range(5)]
        assert len(set(first)) == 1  # one connection, kept alive
        await asyncio.sleep(1.5)  # past uvicorn's keep-alive timeout: it closed the connection
        again = await asyncio.gather(*(transport.attempt(lead()) for _ in range(6)))
    finally:
        await transport.aclose()
    assert {r.status_code for r in again} == {200}
    ports = {r.response["port"] for r in again}
    assert first[0] not in ports and len(ports) <= 3  # new connections, within concurrency


async def test_concurrency_bounds_connections(uvicorn_url: str) -> None:
    transport = HTTPTransport(KEY, base_url=uvicorn_url, concurrency=4)
    try:
        results = await asyncio.gather(*(transport.attempt(lead(f"u{i}")) for i in range(40)))
    finally:
        await transport.aclose()
    assert {r.status_code for r in results} == {200}
    assert 1 <= len({r.response["port"] for r in results}) <= 4


# -- raw servers: crafted and hostile answers ------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class Seen:
    """What a raw server saw: requests per connection, and body bytes it wrote."""

    per_connection: list[int] = field(default_factory=list)
    written: int = 0


#: Handles one request on a connection: (request number on it, idle seconds before it, writer).
Script = Callable[[int, float, asyncio.StreamWriter, Seen], Awaitable[None]]


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handle: Handler, handlers: list[asyncio.Task[Any]]) -> AsyncIterator[str]:
    """Serve ``handle`` on 127.0.0.1 and yield the URL; on exit, cancel the connection tasks
    ``handle`` recorded in ``handlers`` and close the server."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[tuple[str, Seen]]:
    """Serve ``script`` on 127.0.0.1; yield the base URL and what the server saw."""
    seen = Seen()
    handlers: list[asyncio.Task[Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        index = len(seen.per_connection)
        seen.per_connection.append(0)
        last = time.monotonic()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                idle, last = time.monotonic() - last, time.monotonic()
                seen.per_connection[index] += 1
                await script(seen.per_connection[index], idle, writer, seen)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # the server is closing (asyncio logs an error for a handler ended cancelled)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async with serving(handle, handlers) as url:
        yield url, seen


@contextlib.asynccontextmanager
async def forward_proxy() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A forward HTTP proxy: absolute-form requests passed on in origin form, then piped.

    Yields its URL and the request lines it received (one per client connection).
    """
    lines: list[bytes] = []
    handlers: list[asyncio.Task[Any]] = []

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # one side went away, or the proxy is closing
        finally:
            dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line, _, rest = head.partition(b"\r\n")
        lines.append(line)
        method, target, version = line.split(b" ")
        url = urlsplit(target.decode())
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
        path = url.path + (f"?{url.query}" if url.query else "")
        up_writer.write(b" ".join((method, path.encode(), version)) + b"\r\n" + rest)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async with serving(handle, handlers) as url:
        yield url, lines


HUGE = 300 * 1024 * 1024


async def endless(head: bytes, writer: asyncio.StreamWriter, seen: Seen, piece: bytes) -> None:
    """Write ``head``, then ``piece`` until HUGE bytes are out or the client goes away."""
    writer.write(head)
    while seen.written < HUGE:
        writer.write(piece)
        seen.written += len(piece)
        await writer.drain()


def declared_huge(status: bytes) -> Script:
    async def script(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        head = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, HUGE)
        await endless(head, writer, seen, b"a" * 65536)

    return script


def chunked_endless(status: bytes) -> Script:
    async def script(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        head = b"HTTP/1.1 %s\r\nTransfer-Encoding: chunked\r\n\r\n" % status
        await endless(head, writer, seen, b"10000\r\n" + b"a" * 65536 + b"\r\n")

    return script


def until_close(status: bytes) -> Script:
    async def script(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        await endless(b"HTTP/1.1 %s\r\n\r\n" % status, writer, seen, b"a" * 65536)

    return script


@pytest.mark.parametrize("status", [b"200 OK", b"503 Service Unavailable"], ids=["200", "503"])
@pytest.mark.parametrize("answer", [declared_huge, chunked_endless, until_close])
@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "HTTP_PROXY"])
async def test_a_huge_answer_costs_at_most_the_limit(
    answer: Callable[[bytes], Script],
    status: bytes,
    proxied: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 2xx is delivered all the same (outcome unknown, never retried: the provider recorded
    it); any other answer fails its attempt retryably. Either way, no more than the limit."""
    async with raw_server(answer(status)) as (url, seen), forward_proxy() as (proxy, lines):
        if proxied:
            monkeypatch.setenv("HTTP_PROXY", proxy)
        transport = HTTPTransport(KEY, base_url=url, timeout=30)
        tracemalloc.start()
        try:
            try:
                outcome: TrackResult | DeliveryError = await transport.attempt(lead())
            except DeliveryError as error:
                outcome = error
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await transport.aclose()
    if status.startswith(b"200"):
        assert isinstance(outcome, TrackResult) and outcome.status == "sent"
        assert (outcome.outcome, outcome.outcome_reason) == ("unknown", "answer_too_large")
    else:
        assert isinstance(outcome, DeliveryError)
        assert outcome.code == "ResponseTooLarge" and outcome.retryable
        assert f"more than {MAX_ANSWER_BYTES} bytes" in outcome.message
    # The whole exchange (server, proxy and client in this process) held a few buffers at most.
    assert peak < 4 * MAX_ANSWER_BYTES
    assert seen.written < HUGE // 4  # reading stopped long before the end
    assert len(lines) == (1 if proxied else 0)
    if proxied:
        assert lines[0].startswith(b"POST http://127.0.0.1:")  # absolute form: a proxy request


async def test_an_endless_head_is_bounded_too() -> None:
    async def headers(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        await endless(b"HTTP/1.1 200 OK\r\n", writer, seen, b"X-Pad: " + b"a" * 1000 + b"\r\n")

    async with raw_server(headers) as (url, seen):
        transport = HTTPTransport(KEY, base_url=url, timeout=30)
        tracemalloc.start()
        try:
            with pytest.raises(DeliveryError) as caught:
                await transport.attempt(lead())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await transport.aclose()
    assert caught.value.retryable and caught.value.code == "RemoteProtocolError"
    assert peak < 4 * MAX_ANSWER_BYTES and seen.written < HUGE // 4


async def test_an_answer_of_exactly_the_limit_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"pad": "a" * (MAX_ANSWER_BYTES - 11)}).encode()
    assert len(body) == MAX_ANSWER_BYTES

    async def full(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async with raw_server(full) as (url, _):
        transport = HTTPTransport(KEY, base_url=url)
        try:
            result = await transport.attempt(lead())
        finally:
            await transport.aclose()
    assert result.status == "sent" and len(result.response["pad"]) == MAX_ANSWER_BYTES - 11


@pytest.mark.parametrize("part", ["head", "body"])
async def test_a_dripping_answer_is_bounded_by_timeout(part: str) -> None:
    """A byte every 50 ms: no read ever waits ``timeout``, the attempt's deadline ends it."""
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b" " * 1000
    wire = OK if part == "head" else body

    async def drip(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        start = 0 if part == "head" else wire.index(b"\r\n\r\n") + 4
        writer.write(wire[:start])
        for i in range(start, len(wire)):
            writer.write(wire[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)

    async with raw_server(drip) as (url, _):
        transport = HTTPTransport(KEY, base_url=url, timeout=0.5)
        try:
            if part == "head":
                with pytest.raises(DeliveryError) as caught:
                    await transport.attempt(lead())
            else:  # a 2xx head came: the provider accepted the event, never sent twice
                result = await transport.attempt(lead())
        finally:
            await transport.aclose()
    if part == "head":
        assert caught.value.code == "AttemptTimeout" and caught.value.retryable
    else:
        assert (result.status, result.outcome) == ("sent", "unknown")
        assert result.outcome_reason == "answer_unreadable"


async def test_a_timeout_leaves_the_key_out_of_every_frame() -> None:
    async def silent(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        await asyncio.sleep(10)

    async with raw_server(silent) as (url, _):
        transport = HTTPTransport(KEY, base_url=url, timeout=0.2)
        try:
            with pytest.raises(DeliveryError) as caught:
                await transport.attempt(lead())
        finally:
            await transport.aclose()
    texts: list[str] = []
    error: BaseException | None = caught.value
    while error is not None:
        tb = error.__traceback__
        while tb is not None:  # what an error reporter capturing frame locals would send
            texts += [repr(value) for value in tb.tb_frame.f_locals.values()]
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    assert texts and not [text for text in texts if KEY in text]


async def test_idle_connections_expire_before_a_black_hole_can_swallow_them() -> None:
    """As a NAT or load balancer does, the server silently drops connections idle for 0.5 s
    (it never answers on them again): a connection idle past ``keepalive_expiry`` is not used."""

    async def black_hole(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        if n > 1 and idle > 0.5:
            await asyncio.sleep(30)
        writer.write(OK)

    async with raw_server(black_hole) as (url, seen):
        expiring = HTTPTransport(KEY, base_url=url, timeout=2, keepalive_expiry=0.3)
        kept = HTTPTransport(KEY, base_url=url, timeout=2, keepalive_expiry=30)
        try:
            for transport in (expiring, kept):
                await transport.attempt(lead())
                await transport.attempt(lead())  # not idle: the same connection
            await asyncio.sleep(0.7)
            assert (await expiring.attempt(lead())).status == "sent"
            with pytest.raises(DeliveryError) as caught:  # what expiry spares us
                await kept.attempt(lead())
        finally:
            await expiring.aclose()
            await kept.aclose()
    assert caught.value.code == "AttemptTimeout"
    assert sorted(seen.per_connection) == [1, 2, 3]  # expiring: 2 + 1; kept: 3, one unanswered


# -- event loops and given clients -------------------------------------------------------------


async def test_each_loop_that_sends_has_its_own_client_closed_with_it() -> None:
    async def ok(n: int, idle: float, writer: asyncio.StreamWriter, seen: Seen) -> None:
        writer.write(OK)

    async with raw_server(ok) as (url, seen):
        transport = HTTPTransport(KEY, base_url=url)
        await transport.attempt(lead())
        [home] = [mine.client for mine in transport._clients.values()]

        async def job() -> httpx.AsyncClient:
            await transport.attempt(lead())
            return transport._clients[asyncio.get_running_loop()].client

        def jobs() -> list[httpx.AsyncClient]:
            # asyncio.run per job: each job's loop has its own client, closed as the loop ends.
            return [asyncio.run(job()) for _ in range(2)]

        first, second = await asyncio.to_thread(jobs)
        assert len({id(home), id(first), id(second)}) == 3
        assert first.is_closed and second.is_closed and not home.is_closed
        await transport.attempt(lead())  # the home loop's client: its connection kept alive
        assert list(transport._clients) == [asyncio.get_running_loop()]  # the others: gone
        await transport.aclose()
        assert transport._clients == {} and home.is_closed
    assert sorted(seen.per_connection) == [1, 1, 2]


async def test_a_given_client_is_used_as_is_and_never_closed(uvicorn_url: str) -> None:
    async with httpx.AsyncClient(headers={"X-Mine": "1"}) as client:
        transport = HTTPTransport(KEY, base_url=uvicorn_url, client=client)
        seen = (await transport.attempt(lead())).response
        await transport.aclose()
        assert seen["headers"]["x-mine"] == "1" and not client.is_closed
        assert (await transport.attempt(lead())).status == "sent"  # still usable after aclose


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="keepalive_expiry"):
        HTTPTransport(KEY, keepalive_expiry=-1)
    with pytest.raises(ValueError, match="concurrency"):
        HTTPTransport(KEY, concurrency=0)
