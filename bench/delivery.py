"""Client CPU per delivered event against a fixed fast server (nginx ``return 200``), by client.

The floor is a raw ``asyncio.Protocol`` HTTP/1.1 client (keep-alive connections, one
precomputed request, the least parsing that finds the end of the answer). Then: the whole path
(``track_lead`` -> background queue -> attempt -> response) with ``HTTPTransport`` as it is
(httpx); httpx alone; aiohttp alone; the dub SDK. Concurrency 10/20/50, plain HTTP and TLS 1.3.
Delivery CPU per event is reported, not a goal: the providers accept at most 60 to 3,000
tracking requests a minute per key. CPU is ``time.process_time()`` of this process (the
client's loop); nginx runs in its own process. Rows are interleaved (shuffled per round); each
row's figure is the least of its rounds: on this shared VM, interference only ever adds CPU
time (the same code's medians moved 30% from one run to the next), so the least is the closest
to what the code itself costs. The median is kept in ``results.json`` beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

from .common import median
from .nginx import Nginx, nginx

CLICK_ID = "cm3kf8x2a0001bench9yz7q"
_ids = itertools.count()
CONCURRENCY = (10, 20, 50)


def _lead_body() -> bytes:
    from asgi_attribution import DUB, LeadEvent

    event = LeadEvent(
        click_id=CLICK_ID,
        event_name="Sign up",
        customer_external_id="user_123456",
        customer_email="someone@example.com",
        customer_name="Some One",
    )
    return json.dumps(DUB.render(event).json, separators=(",", ":")).encode()


def _context(server: Nginx, tls: bool) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=server.ca_file) if tls else None


# -- the floor: a raw protocol client -----------------------------------------------------------


class _Floor(asyncio.Protocol):
    def __init__(self, request: bytes, left: list[int], done: asyncio.Future[None]) -> None:
        self.request, self.left, self.done = request, left, done
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def next(self) -> None:
        if self.left[0] <= 0:
            if not self.done.done() and self.left[1] == 0:
                self.done.set_result(None)
            return
        self.left[0] -= 1
        self.left[1] += 1
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buf
            return
        start = buf.find(b"Content-Length: ", 0, end) + 16
        length = int(buf[start : buf.find(b"\r", start)])
        if len(buf) < end + 4 + length:
            self.buffer = buf
            return
        if not buf.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(buf[:100])
        self.buffer = buf[end + 4 + length :]
        self.left[1] -= 1
        self.next()


async def _floor(url: str, ctx: ssl.SSLContext | None, c: int, n: int) -> float:
    loop = asyncio.get_running_loop()
    host, port = url.rsplit("/", 1)[1].split(":")
    body = _lead_body()
    request = (
        f"POST /track/lead HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer k\r\n"
        f"Content-Type: application/json\r\nIdempotency-Key: evt_0123456789abcdef\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def batch(count: int) -> None:
        left = [count, 0]
        done: asyncio.Future[None] = loop.create_future()
        for p in protocols:
            p.left, p.done = left, done
            p.next()
        await done

    protocols: list[_Floor] = []
    for _ in range(c):
        _, p = await loop.create_connection(
            lambda: _Floor(request, [0, 0], loop.create_future()), host, int(port), ssl=ctx
        )
        protocols.append(p)
    await batch(200)  # warm
    cpu = time.process_time()
    await batch(n)
    cpu = time.process_time() - cpu
    for p in protocols:
        p.transport.close()
    await asyncio.sleep(0.01)
    return cpu / n


class _Awaited(asyncio.Protocol):
    """The same least parsing, but each response is awaited by a coroutine (as callers do)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: Any = None
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        end = buf.find(b"\r\n\r\n")
        start = buf.find(b"Content-Length: ", 0, end) + 16
        if end < 0 or len(buf) < end + 4 + int(buf[start : buf.find(b"\r", start)]):
            self.buffer = buf
            return
        self.buffer = b""
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set_result(buf)


async def _floor_awaited(url: str, ctx: ssl.SSLContext | None, c: int, n: int) -> float:
    loop = asyncio.get_running_loop()
    host, port = url.rsplit("/", 1)[1].split(":")
    body = _lead_body()
    request = (
        f"POST /track/lead HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer k\r\n"
        f"Content-Type: application/json\r\nIdempotency-Key: evt_0123456789abcdef\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: list[_Awaited] = []
    for _ in range(c):
        _, p = await loop.create_connection(_Awaited, host, int(port), ssl=ctx)
        idle.append(p)

    async def call() -> None:
        p = idle.pop()
        p.waiter = loop.create_future()
        p.transport.write(request)
        answer = await p.waiter
        idle.append(p)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(answer[:100])

    try:
        return await _workers(call, c, n)
    finally:
        for p in idle:
            p.transport.close()
        await asyncio.sleep(0.01)


# -- clients alone --------------------------------------------------------------------------


async def _workers(call: Callable[[], Awaitable[Any]], c: int, n: int) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    await asyncio.gather(*(worker(20) for _ in range(c)))  # warm: connections open
    cpu = time.process_time()
    await asyncio.gather(*(worker(n // c) for _ in range(c)))
    return (time.process_time() - cpu) / (n // c * c)


async def _httpx(url: str, ctx: ssl.SSLContext | None, c: int, n: int) -> float:
    import httpx

    payload = json.loads(_lead_body())
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(base_url=url, verify=ctx or True, limits=limits) as client:

        async def call() -> None:
            r = await client.post(
                "/track/lead",
                json=payload,
                headers={"Authorization": "Bearer k", "Idempotency-Key": "evt_1"},
            )
            r.raise_for_status()
            r.json()

        return await _workers(call, c, n)


async def _aiohttp(url: str, ctx: ssl.SSLContext | None, c: int, n: int) -> float:
    import aiohttp

    payload = json.loads(_lead_body())
    connector = aiohttp.TCPConnector(limit=c, ssl=ctx if ctx else True)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def call() -> None:
            headers = {"Authorization": "Bearer k", "Idempotency-Key": "evt_1"}
            async with session.post("/track/lead", json=payload, headers=headers) as r:
                r.raise_for_status()
                await r.json()

        return await _workers(call, c, n)


async def _sdk(url: str, ctx: ssl.SSLContext | None, c: int, n: int) -> float:
    import dub

    sdk = dub.Dub(token="k", server_url=url)

    from dub.models.errors import ResponseValidationError

    async def call() -> None:
        # Answered either way; newer SDK models want more link fields than nginx returns.
        with contextlib.suppress(ResponseValidationError):
            await sdk.track.lead_async(
                request={
                    "click_id": CLICK_ID,
                    "event_name": "Sign up",
                    "customer_external_id": f"user_{next(_ids)}",
                }
            )

    return await _workers(call, c, n)


# -- the whole path -----------------------------------------------------------------------------


async def _path(url: str, ctx: ssl.SSLContext | None, c: int, n: int) -> float:
    from asgi_attribution import Tracker
    from asgi_attribution.transports._background import BackgroundTransport
    from asgi_attribution.transports._http import HTTPTransport

    # As shipped: httpx verifies TLS with SSL_CERT_FILE (the run's CA, set by run()).
    inner = HTTPTransport("k", base_url=url, concurrency=c)
    tracker = Tracker("dub", transport=BackgroundTransport(inner, concurrency=c))
    await tracker.start()

    async def burst(count: int) -> None:
        for _ in range(count):
            await tracker.track_lead(
                click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"u{next(_ids)}"
            )
        await tracker.flush()

    try:
        await burst(100)
        cpu = time.process_time()
        await burst(n)
        cpu = time.process_time() - cpu
        stats = tracker.stats.as_dict()
        if stats["sent"] != n + 100:
            raise RuntimeError(f"{stats['sent']} of {n + 100} delivered: {stats}")
        return cpu / n
    finally:
        await tracker.aclose()


# -- the table --------------------------------------------------------------------------------


def _rows(quick: bool) -> dict[str, tuple[Callable[..., Awaitable[float]], bool, int, int]]:
    """label -> (function, tls, concurrency, events)."""
    scale = 0.3 if quick else 1.0
    rows: dict[str, Any] = {}
    for tls in (False, True):
        t = "TLS" if tls else "HTTP"
        rows[f"floor: raw asyncio.Protocol client, {t}, c=10"] = (_floor_awaited, tls, 10, 3500)
        rows[f"floor, callbacks only (no coroutine per request), {t}, c=10"] = (
            _floor, tls, 10, 3500)  # fmt: skip
        for c in CONCURRENCY if not tls else (10,):
            # Fewer events above c=10: httpcore's pool checks every connection for each idle
            # one at each request (O(c²); about 9 ms of CPU per event at c=50 on our VM).
            rows[f"ours (whole path), {t}, c={c}"] = (_path, tls, c, 200 if c == 10 else 60)
        rows[f"httpx alone, {t}, c=10"] = (_httpx, tls, 10, 250)
        rows[f"aiohttp alone, {t}, c=10"] = (_aiohttp, tls, 10, 1200)
    rows["dub SDK track.lead_async, HTTP, c=10"] = (_sdk, False, 10, 120)
    return {k: (f, tls, c, max(60, int(n * scale))) for k, (f, tls, c, n) in rows.items()}


def run(*, rounds: int = 8, quick: bool = False) -> dict[str, Any]:
    with nginx() as server, contextlib.ExitStack() as trust:
        if server is None:
            return {"available": False, "note": "nginx or openssl is missing"}
        # HTTPTransport trusts what SSL_CERT_FILE names (httpx's trust_env); only while the CA
        # file exists: the steps after this one make clients of their own.
        trust.enter_context(mock.patch.dict(os.environ, {"SSL_CERT_FILE": server.ca_file}))
        rows = _rows(quick)
        samples: dict[str, list[float]] = {k: [] for k in rows}
        for _ in range(rounds):
            order = list(rows)
            random.shuffle(order)
            for name in order:
                fn, tls, c, n = rows[name]
                url = server.tls_url if tls else server.plain_url
                try:
                    samples[name].append(asyncio.run(fn(url, _context(server, tls), c, n)))
                except Exception as exc:  # a client that fails is reported, not fatal
                    print(f"   {name}: {type(exc).__name__}: {exc}", flush=True)
        out: dict[str, Any] = {"available": True, "rounds": rounds, "rows": {}}
        for name, values in samples.items():
            if values:
                out["rows"][name] = {
                    "cpu_us_per_event": round(min(values) * 1e6, 1),
                    "median_cpu_us_per_event": round(median(values) * 1e6, 1),
                    "events": rows[name][3],
                }
        return out


if __name__ == "__main__":
    import sys

    print(json.dumps(run(rounds=1, quick="--quick" in sys.argv), indent=1))
