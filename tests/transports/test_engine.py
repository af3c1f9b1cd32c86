"""The engine against real servers: uvicorn with h11 and with httptools, and the fake provider
with faults (every event recorded exactly once per ``Idempotency-Key``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from asgi_attribution import DUB, LeadEvent
from asgi_attribution.testing import FakeProvider, Faults
from asgi_attribution.transports.engine import (
    AttemptTimeout,
    ConnectError,
    Engine,
    EngineError,
    Limits,
    Response,
    proxies_configured,
)
from asgi_attribution.transports.engine.connection import Connection
from tests.support.asgi import KEY

pytestmark = pytest.mark.anyio


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what it got; ``/chunked`` streams, ``/close`` closes, ``/slow`` waits."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    headers = [(b"content-type", b"application/json")]
    if path == "/slow":
        await asyncio.sleep(1.0)
    if path.startswith("/status/"):
        await send({"type": "http.response.start", "status": int(path[8:]), "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = json.dumps(
        {
            "method": scope["method"],
            "path": path,
            "port": scope["client"][1],
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "body": body.decode(),
        }
    ).encode()
    if path == "/close":
        headers.append((b"connection", b"close"))
    if path == "/chunked":  # no content-length, several body messages: chunked on the wire
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(0, len(answer), 7):
            await send({"type": "http.response.body", "body": answer[i : i + 7], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(len(answer)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module", params=["h11", "httptools"])
def uvicorn_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The echo app under a real uvicorn (``--http h11`` / ``--http httptools``) in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        echo,
        http=request.param,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=1,
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


async def test_post_and_patch_with_headers_and_body(uvicorn_url: str) -> None:
    engine = Engine(uvicorn_url + "/api", headers={"Authorization": "Bearer k", "User-Agent": "t"})
    try:
        post = await engine.request("POST", "/track/lead", b'{"a": 1}', {"Idempotency-Key": "e1"})
        patch = await engine.request("PATCH", "/customers/ext_1", b"{}", {})
    finally:
        await engine.aclose()
    seen = post.json()
    assert (post.status, seen["method"], seen["path"], seen["body"]) == (
        200,
        "POST",
        "/api/track/lead",
        '{"a": 1}',
    )
    assert seen["headers"]["authorization"] == "Bearer k"
    assert seen["headers"]["idempotency-key"] == "e1"
    assert seen["headers"]["host"] == uvicorn_url.removeprefix("http://")
    assert (patch.json()["method"], patch.json()["port"]) == ("PATCH", seen["port"])  # reused


async def test_the_idempotency_key_is_sent_as_a_header_and_checked_like_one(
    uvicorn_url: str,
) -> None:
    engine = Engine(uvicorn_url, headers={"Authorization": "Bearer k"})
    try:
        sent = await engine.request("POST", "/x", b"{}", idempotency_key="evt_1")
        assert sent.json()["headers"]["idempotency-key"] == "evt_1"
        with pytest.raises(ValueError, match="CR, LF or NUL"):  # header injection
            await engine.request("POST", "/x", b"{}", idempotency_key="evt_1\r\nX-Evil: 1")
        with pytest.raises(UnicodeEncodeError):  # as any other header that is not ASCII
            await engine.request("POST", "/x", b"{}", idempotency_key="évt")
        tab = engine.encode("POST", "/x", b"", None, "a\tb")  # printable it is not, valid it is
        assert b"\r\nIdempotency-Key: a\tb\r\n" in tab
        assert engine.encode("POST", "/x", b"", None, "k") == engine.encode(
            "POST", "/x", b"", {"Idempotency-Key": "k"}
        )
    finally:
        await engine.aclose()


async def test_chunked_close_and_bodyless_answers(uvicorn_url: str) -> None:
    engine = Engine(uvicorn_url)
    try:
        chunked = await engine.request("POST", "/chunked", b"x" * 100)
        assert chunked.header(b"transfer-encoding") == "chunked"
        assert chunked.json()["body"] == "x" * 100
        closing = await engine.request("POST", "/close", b"")
        after = await engine.request("POST", "/echo", b"")
        assert closing.json()["port"] == chunked.json()["port"]
        assert after.json()["port"] != closing.json()["port"]  # a new connection after close
        for status in (204, 304, 404, 503):
            answer = await engine.request("POST", f"/status/{status}", b"")
            assert (answer.status, answer.body) == (status, b"")
    finally:
        await engine.aclose()


async def test_concurrency_bounds_connections(uvicorn_url: str) -> None:
    engine = Engine(uvicorn_url, concurrency=5)
    try:
        answers = await asyncio.gather(
            *(engine.request("POST", "/echo", str(i).encode()) for i in range(60))
        )
    finally:
        await engine.aclose()
    assert sorted(int(a.json()["body"]) for a in answers) == list(range(60))
    assert len({a.json()["port"] for a in answers}) <= 5


async def test_idle_connections_closed_by_the_server_are_replaced(uvicorn_url: str) -> None:
    engine = Engine(uvicorn_url, concurrency=3)
    try:
        await asyncio.gather(*(engine.request("POST", "/echo", b"") for _ in range(3)))
        await asyncio.sleep(1.5)  # past uvicorn's keep-alive timeout: it closed them all
        answers = await asyncio.gather(*(engine.request("POST", "/echo", b"") for _ in range(6)))
    finally:
        await engine.aclose()
    assert {a.status for a in answers} == {200}


async def test_timeout_and_cancel_drop_the_connection(uvicorn_url: str) -> None:
    engine = Engine(uvicorn_url, timeout=0.3, concurrency=1)
    try:
        with pytest.raises(AttemptTimeout):
            await engine.request("POST", "/slow", b"")
        task = asyncio.ensure_future(engine.request("POST", "/slow", b""))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await engine.request("POST", "/echo", b"")).status == 200  # the slot came back
    finally:
        await engine.aclose()


async def test_refused_connection_is_a_retryable_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = Engine(f"http://127.0.0.1:{port}", concurrency=1)
    for _ in range(3):  # the slot is given back after each failure
        with pytest.raises(ConnectError) as info:
            await engine.request("POST", "/x", b"")
        assert info.value.retryable
    await engine.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await engine.request("POST", "/x", b"")


def test_proxies_configured_reads_every_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    assert not proxies_configured()
    for name in ("https_proxy", "All_Proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://proxy:3128")
        assert proxies_configured()
        monkeypatch.delenv(name)
    assert not proxies_configured()


# -- the fake provider, with faults -------------------------------------------------------


async def deliver(engine: Engine, event: LeadEvent) -> int:
    """Attempts until the provider answers 2xx (what the retry layers do, in short)."""
    request = DUB.render(event)
    body = json.dumps(request.json).encode()
    for _ in range(100):
        try:
            answer = await engine.request(
                request.method, request.path, body, {"Idempotency-Key": event.event_id}
            )
        except EngineError as error:
            assert error.retryable
        else:
            if answer.status < 300:
                return answer.status
            assert answer.status == 503 or answer.status == 429, answer.body
        await asyncio.sleep(0.01)
    raise AssertionError(f"{event.event_id} never delivered")


async def test_every_event_recorded_exactly_once_under_faults(
    provider: FakeProvider, url: str
) -> None:
    provider.faults = Faults(
        error_rate=0.15, drop_rate=0.1, slow_rate=0.05, slow_seconds=0.6, seed=16
    )
    events = [
        LeadEvent(click_id="c", event_name="Sign up", customer_external_id=f"user_{i}")
        for i in range(300)
    ]
    engine = Engine(
        url,
        concurrency=10,
        timeout=0.4,  # below slow_seconds: a slow answer is a timeout, then a retry
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        statuses = await asyncio.gather(*(deliver(engine, e) for e in events))
    finally:
        await engine.aclose()
    assert set(statuses) == {200}
    recorded: dict[str, int] = {}
    for request in provider.accepted:
        recorded[request.idempotency_key or ""] = recorded.get(request.idempotency_key or "", 0) + 1
    assert recorded == {e.event_id: 1 for e in events}
    attempts = sum(provider.count_by_idempotency_key().values()) + len(
        [r for r in provider.requests if r.status != 200]
    )
    assert attempts > len(events)  # faults were injected and retried


# -- the attempt's timer (one per connection, moved to the deadline of the request in flight) --


@contextlib.asynccontextmanager
async def delaying_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Answers ``POST /wait/<ms>`` after that many milliseconds; yields the URL and the
    number of requests seen on each connection."""
    per_connection: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(per_connection)
        per_connection.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                per_connection[index] += 1
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                wait = re.match(rb"POST /wait/(\d+) ", head)
                await asyncio.sleep(int(wait.group(1)) / 1000 if wait else 0)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", per_connection
    finally:
        server.close()


async def test_each_request_on_a_reused_connection_gets_its_own_timeout() -> None:
    async with delaying_server() as (url, per_connection):
        engine = Engine(url, timeout=1.0, concurrency=1)
        loop = asyncio.get_running_loop()
        try:
            assert (await engine.request("POST", "/wait/0")).body == b"ok"
            await asyncio.sleep(0.6)
            # Answered 1.3 s after the first request: past its deadline (when the connection's
            # timer was set to fire), within this one's.
            assert (await engine.request("POST", "/wait/700")).body == b"ok"
            started = loop.time()
            with pytest.raises(AttemptTimeout):
                await engine.request("POST", "/wait/3000")
            assert loop.time() - started >= 0.9  # not cut short by an earlier deadline
            assert (await engine.request("POST", "/wait/0")).body == b"ok"
        finally:
            await engine.aclose()
    assert per_connection == [3, 1]  # kept alive until the timeout dropped it


async def test_an_earlier_deadline_moves_the_connection_timer_forward() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, conn = await loop.create_connection(lambda: Connection(Limits(), 5), sock=ours)
    try:
        first: asyncio.Future[Response] = loop.create_future()
        conn.send(b"POST / HTTP/1.1\r\n\r\n", first, loop.time() + 30)
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert (await first).status == 200
        second: asyncio.Future[Response] = loop.create_future()
        conn.send(b"POST / HTTP/1.1\r\n\r\n", second, loop.time() + 0.1)  # armed for +30 s
        with pytest.raises(AttemptTimeout):
            await asyncio.wait_for(second, 10)
        assert not conn.reusable
    finally:
        transport.close()
        theirs.close()
        await asyncio.sleep(0)
    assert conn.timer is None  # cancelled with the connection: nothing left on the loop
