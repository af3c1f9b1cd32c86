"""The Redis outbox against its own failures, on real redis-server instances started per case
with the settings each needs: down at startup, hung (SIGSTOP), killed without persistence,
evicting, restarted without its data, full at ``maxmemory``.

Each case counts what was sent, what was delivered, what was reported (``durable=False``, an
ERROR, a refusal) and what was lost; silently lost (reported durable, never delivered) is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from asgi_attribution import AttributionMiddleware, OutboxError, RedisOutbox, Tracker, track_lead
from asgi_attribution.transports import OutboxTransport, TrackResult

from .conftest import DURABLE
from .scripted import Scripted
from .servers import RedisServer
from .test_sqlite_faults import lead, silently_lost

pytestmark = pytest.mark.anyio
Start = Callable[..., RedisServer]


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_redis_down_at_startup_the_apps_lifespan_still_runs(
    redis_server: Start, provider: Any, url: str, caplog: Any
) -> None:
    server = redis_server(*DURABLE, now=False)  # not running yet
    tracker = Tracker("dub", api_key="dub_test_key", base_url=url, outbox=server.url)
    started: list[bool] = []

    async def signup(request: Request) -> JSONResponse:
        result = await track_lead(
            request, "Sign up", customer_external_id=request.query_params["u"]
        )
        return JSONResponse({"durable": result.durable, "status": result.status})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append(True)  # the app's own startup
        yield

    app = Starlette(lifespan=lifespan)
    app.add_route("/signup", signup, methods=["POST"])
    wrapped = AttributionMiddleware(app, tracker=tracker)
    transport = tracker.transport
    assert isinstance(transport, OutboxTransport)
    async with LifespanManager(wrapped):
        assert started == [True]  # the app's own startup ran
        assert "unavailable at startup" in caplog.text
        client = httpx.AsyncClient(transport=httpx.ASGITransport(wrapped), base_url="http://t")
        async with client:
            first = await client.post("/signup?u=u1&dub_id=clk1")
            assert first.json() == {"durable": False, "status": "queued"}  # memory, said so
            server.start()
            await wait_for(lambda: transport.is_open, "the store opened in the background")
            second = await client.post("/signup?u=u2&dub_id=clk2")
            assert second.json() == {"durable": True, "status": "queued"}
            await tracker.flush(timeout=20)
    delivered = {(r.body or {}).get("customerExternalId") for r in provider.requests}
    assert {"u1", "u2"} <= delivered


async def test_a_hung_redis_never_holds_a_signup_past_append_timeout(
    redis_server: Start,
) -> None:
    server = redis_server(*DURABLE)
    inner = Scripted()
    # A short lease: a claim whose answer the hang swallowed comes back soon.
    transport = OutboxTransport(server.url, inner, poll_interval=0.05, append_timeout=0.5, lease=3)
    await transport.start()
    before = [await transport.send(lead(i)) for i in range(20)]
    server.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        waits, during = [], []
        for i in range(20, 30):
            started = time.monotonic()
            during.append(await transport.send(lead(i)))
            waits.append(time.monotonic() - started)
        started = time.monotonic()
        during += await asyncio.gather(*(transport.send(lead(i)) for i in range(30, 50)))
        waits.append(time.monotonic() - started)
    finally:
        server.resume()
    assert max(waits) < transport.append_timeout + 0.5
    assert not any(r.durable for r in during)
    await transport.flush(timeout=30)
    await transport.aclose()
    everything = before + during
    missing = [
        (i, r.durable, r.status)
        for i, r in enumerate(everything)
        if not inner.sent[r.event_id or ""]
    ]
    assert missing == []  # every event delivered
    assert max(inner.sent.values()) == 1  # a write that reached the server late stored nothing
    assert silently_lost(everything, inner) == []


async def test_killed_without_persistence_nothing_was_promised(
    redis_server: Start, caplog: Any
) -> None:
    server = redis_server("--appendonly", "no", "--save", "")
    transport = OutboxTransport(server.url, Scripted(), deliver=False)
    await transport.start()
    results = [await transport.send(lead(i)) for i in range(200)]
    await transport.aclose()
    assert "has no append-only file" in caplog.text
    server.kill()
    server.start()
    async with RedisOutbox(server.url) as store:
        left = await store.unfinished()
    assert left == 0  # all 200 gone with the server...
    assert not any(r.durable or r.accepted for r in results)  # ...and none was promised


async def test_an_evicting_redis_is_refused_at_open(redis_server: Start, caplog: Any) -> None:
    server = redis_server(*DURABLE, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    with pytest.raises(OutboxError) as refused:
        async with RedisOutbox(server.url):
            pass
    message = str(refused.value)
    assert "allkeys-lru" in message and "allow_eviction" in message and "\n" not in message
    async with RedisOutbox(server.url, allow_eviction=True) as store:
        assert not store.durable and "may evict" in " ".join(store.problems)
    assert "events may be evicted" in caplog.text


async def test_restarted_without_its_data_the_worker_recovers(
    redis_server: Start, caplog: Any
) -> None:
    server = redis_server(*DURABLE)
    inner = Scripted()
    transport = OutboxTransport(server.url, inner, poll_interval=0.05)
    await transport.start()
    first = [await transport.send(lead(i)) for i in range(50)]
    await transport.flush(timeout=20)
    server.kill()
    server.wipe()
    server.start()  # empty: no stream, no consumer group
    await asyncio.sleep(0.2)
    later: list[TrackResult] = []
    for i in range(50, 550):
        later.append(await transport.send(lead(i)))
    await wait_for(lambda: len(inner.sent) >= 550, "the new events delivered")
    await transport.aclose()
    assert "stream lost" in caplog.text
    lost = [r for r in caplog.records if "stream lost" in r.getMessage()]
    assert lost and lost[0].levelno == logging.ERROR
    assert set(inner.sent) == {r.event_id for r in first + later}
    assert silently_lost(first + later, inner) == []


async def test_a_full_redis_still_drains_its_backlog(redis_server: Start) -> None:
    server = redis_server(*DURABLE, "--maxmemory-policy", "noeviction")
    writer = OutboxTransport(server.url, Scripted(), deliver=False)
    await writer.start()
    backlog = [await writer.send(lead(i)) for i in range(1001)]
    admin = server.client()
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", str(int(used * 0.95)))  # full: every write that grows is refused
    refused = await writer.send(lead(5000))
    await writer.aclose()
    assert all(r.durable for r in backlog) and not refused.durable  # went to memory, said so
    inner = Scripted()
    worker = OutboxTransport(server.url, inner, poll_interval=0.05, concurrency=50)
    await worker.start()  # a fresh worker opens a full Redis
    await wait_for(lambda: len(inner.sent) >= 1001, "the backlog drained", timeout=60)
    await worker.flush(timeout=20)
    await worker.aclose()
    admin.close()
    assert {r.event_id for r in backlog} <= set(inner.sent)
    assert max(inner.sent.values()) <= 2 and sum(inner.sent.values()) < 1100


async def test_attempts_persist_across_a_takeover_and_idle_consumers_go(
    redis_server: Start,
) -> None:
    server = redis_server(*DURABLE)
    async with (
        RedisOutbox(server.url, consumer="a") as a,
        RedisOutbox(server.url, consumer="b") as b,
    ):
        await a.append(RedisRow.make(0))
        [taken] = await a.claim(1, lease=0.2)  # worker a dies holding it
        assert taken.attempts == 1
        await asyncio.sleep(0.3)
        [again] = await b.claim(1, lease=0.2)
        assert again.attempts == 2  # the lost attempt counts: a poison event runs out
        await b.delivered(again)
        await asyncio.sleep(0.3)
        await b.maintain()
        admin = server.client()
        names = [c["name"] for c in admin.xinfo_consumers(b.stream, b.group)]
        admin.close()
    assert names == ["b"]


class RedisRow:
    @staticmethod
    def make(i: int) -> Any:
        from asgi_attribution.transports import OutboxRow

        return OutboxRow.from_delivery(lead(i))
