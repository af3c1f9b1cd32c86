"""Issue 26 against real redis-server instances and the fake provider over HTTP: a hung Redis
whose writes land after their callers gave up, and a Redis without persistence killed with
events in it. Each case counts, in the provider's ledger, what was sent, delivered, delivered
twice, reported by id and silently lost (always 0; duplicates 0 where one delivery is due).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from asgi_attribution import RedisOutbox
from asgi_attribution.testing import FakeProvider, Faults
from asgi_attribution.transports import OutboxTransport, RetryPolicy
from tests.support.asgi import KEY

from .conftest import DURABLE
from .ledger import lead, tally
from .servers import RedisServer

pytestmark = pytest.mark.anyio
Start = Callable[..., RedisServer]
VOLATILE = ("--appendonly", "no", "--save", "")
FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, max_retry_after=1, max_elapsed=120)


def outbox(store: Any, url: str, **options: Any) -> OutboxTransport:
    options.setdefault("poll_interval", 0.05)
    options.setdefault("retry", FAST)
    return OutboxTransport(store, api_key=KEY, base_url=url, **options)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_hung_redis_delivers_each_timed_out_append_once(
    redis_server: Start, provider: FakeProvider, url: str
) -> None:
    server = redis_server(*DURABLE)
    transport = outbox(server.url, url, append_timeout=0.5, lease=5)
    await transport.start()
    sent = [lead(0)]
    results = [await transport.send(sent[0])]
    server.pause()  # SIGSTOP past append_timeout: every write now lands late, or never
    try:
        during = [lead(i) for i in range(1, 51)]
        sent += during
        results += await asyncio.gather(*(transport.send(d) for d in during))
        await asyncio.sleep(1.5)  # well past the timeouts, as in the attack
    finally:
        server.resume()
    assert results[0].durable and not any(r.durable for r in results[1:])
    await wait_for(lambda: tally(provider, sent).delivered == len(sent), "every event delivered")
    await transport.flush(timeout=30)
    await asyncio.sleep(1.0)  # a late copy from the store would be delivered by now
    await transport.aclose()
    counted = tally(provider, sent)
    print(counted.row("Redis SIGSTOP past append_timeout, SIGCONT"))
    assert counted.silently_lost == []
    assert counted.duplicates == 0 and counted.delivered == 51


async def test_a_redis_without_persistence_killed_gives_back_what_this_process_held(
    redis_server: Start, provider: FakeProvider, url: str, caplog: Any
) -> None:
    server = redis_server(*VOLATILE)
    appender = outbox(server.url, url, deliver=False)
    await appender.start()
    store = appender.store
    assert isinstance(store, RedisOutbox)
    sent = [lead(i) for i in range(500)]
    results = [await appender.send(d) for d in sent]
    assert not any(r.durable for r in results)  # said so: this Redis may lose them
    assert store.held == 500
    server.kill()  # SIGKILL, no AOF: the stream is gone
    server.start()
    for i in range(500, 520):  # the first write the restarted server takes finds it new
        sent.append(lead(i))
        await appender.send(sent[-1])
        if "Redis lost its data" in caplog.text:
            break
        await asyncio.sleep(0.5)  # a pooled connection died with the server: an outage
    assert "Redis lost its data" in caplog.text
    worker = outbox(server.url, url, concurrency=20)
    await worker.start()
    await wait_for(lambda: tally(provider, sent).delivered == len(sent), "every event delivered")
    await worker.flush(timeout=30)
    await worker.aclose()
    await appender.aclose()
    lost_lines = " ".join(
        r.getMessage() for r in caplog.records if "lost its data" in r.getMessage()
    )
    counted = tally(provider, sent, lost_lines)
    print(counted.row("Redis without AOF, SIGKILL + restart, append-only process"))
    assert counted.reported == 500  # named by id: the rows this process appended again
    assert counted.silently_lost == [] and counted.duplicates == 0


async def test_a_delivering_process_finds_the_loss_by_its_claim_and_delivers_its_retries(
    redis_server: Start, provider: FakeProvider, url: str, caplog: Any
) -> None:
    server = redis_server(*VOLATILE)
    provider.faults = Faults(error_rate=1.0)  # every attempt 503: the events wait in the retry set
    later = RetryPolicy(initial_backoff=5, max_backoff=5, max_retry_after=5, max_elapsed=300)
    transport = outbox(server.url, url, concurrency=20, retry=later)
    await transport.start()
    sent = [lead(i) for i in range(200)]
    for d in sent:
        await transport.send(d)
    store = transport.store
    assert isinstance(store, RedisOutbox)
    admin = server.client()
    await wait_for(lambda: admin.zcard(store.retry_key) > 150, "most events retrying")
    admin.close()
    server.kill()
    server.start()
    provider.faults = Faults()
    await wait_for(lambda: tally(provider, sent).delivered == len(sent), "every event delivered")
    await transport.flush(timeout=30)
    await transport.aclose()
    lines = " ".join(r.getMessage() for r in caplog.records if "lost its data" in r.getMessage())
    counted = tally(provider, sent, lines)
    print(counted.row("Redis without AOF, SIGKILL + restart, delivering process"))
    assert counted.silently_lost == [] and counted.duplicates == 0
    assert counted.reported >= 150
