"""The Redis Streams outbox against a real redis-server started for these tests.

Skipped with a reason when no ``redis-server`` binary (or redis-py) is available on a developer's
machine; never skipped when ``CI`` is set: there a missing server fails the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import DUB, LeadEvent, OutboxError, RedisOutbox, RetryPolicy, Tracker
from asgi_attribution._cli.outbox import main as outbox_main
from asgi_attribution.testing import FakeProvider, Faults
from asgi_attribution.transports import Delivery, OutboxTransport
from tests.support.asgi import KEY
from tests.support.waiting import wait_until

from .scripted import Scripted

pytestmark = pytest.mark.anyio
WORKER = Path(__file__).parents[1] / "support" / "outbox_worker_app.py"
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=2, max_elapsed=30)
LEAD = {"click_id": "clk", "event_name": "Sign up"}


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the Redis tests must run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        import redis
    except ImportError:
        unavailable("redis-py is not installed: pip install 'asgi-attribution[redis]'")
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no redis-server binary on PATH (Debian: apt-get install redis-server)")
    assert binary is not None
    directory = tmp_path_factory.mktemp("redis")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    unavailable(f"redis-server did not start on port {port}")
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:8]}"


def sync_redis(redis_url: str) -> Any:
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True)


async def test_append_only_instances_and_a_worker_deliver_everything(
    redis_url: str, prefix: str, provider: FakeProvider, url: str
) -> None:
    provider.faults = Faults(error_rate=0.2, rate_limit_rate=0.1, retry_after_seconds=0.05, seed=2)
    app = Tracker("dub", outbox=RedisOutbox(redis_url, prefix=prefix), deliver=False)
    async with app:
        results = [await app.track_lead(**LEAD, customer_external_id=f"u{i}") for i in range(50)]
    assert all(r.durable and r.accepted for r in results)
    assert provider.requests == []  # the app instance only appended

    store = RedisOutbox(redis_url, prefix=prefix)
    worker = Tracker("dub", api_key=KEY, base_url=url, outbox=store, retry=FAST)
    async with worker:
        await worker.flush(timeout=30)
        status = await store.status()
    assert status.counts == {"pending": 0, "inflight": 0, "delivered": 50, "dead": 0}
    assert set(provider.count_by_idempotency_key()) == {r.event_id for r in results}
    assert worker.stats.sent == 50 and worker.stats.retried > 0


async def test_dead_letters_retry_and_status(
    redis_url: str, prefix: str, provider: FakeProvider, url: str
) -> None:
    store = RedisOutbox(redis_url, prefix=prefix)
    refusing = Scripted()
    refusing.final_code = "bad_request"
    bad = OutboxTransport(store, refusing, poll_interval=0.05)
    ids = []
    for i in range(3):
        lead = LeadEvent(click_id="clk", event_name="Sign up", customer_external_id=f"u{i}")
        ids.append((await bad.send(Delivery(lead, DUB))).event_id)
    await bad.flush(timeout=10)
    await bad.aclose()
    async with RedisOutbox(redis_url, prefix=prefix) as store:
        dead = await store.list_dead()
        assert sorted(r.event_id for r in dead) == sorted(ids)
        assert all("HTTP 404 bad_request" in (r.last_error or "") for r in dead)
        status = await store.status()
        assert status.counts["dead"] == 3 and status.unfinished == 0
        assert await store.retry_dead(ids[:1]) == 1
        status = await store.status()
        assert status.counts["dead"] == 2 and status.counts["pending"] == 1

    # The CLI sees the same store; retry the rest and deliver with the right key.
    def cli(*args: str) -> int:
        return outbox_main([*args, "--redis-url", redis_url, "--redis-prefix", prefix])

    assert await asyncio.to_thread(cli, "status") == 1  # dead letters present
    assert await asyncio.to_thread(cli, "retry") == 0
    deliver = ("deliver", "--api-key", KEY, "--base-url", url, "--no-progress")
    assert await asyncio.to_thread(cli, *deliver) == 0
    assert set(provider.count_by_idempotency_key()) == set(ids)
    assert await asyncio.to_thread(cli, "status") == 0


def start_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_workers_pending_entries_are_claimed_by_the_other(
    redis_url: str, prefix: str, provider: FakeProvider, url: str
) -> None:
    # Every answer is slow, so each worker always holds entries in flight.
    provider.faults = Faults(slow_rate=1.0, slow_seconds=0.3)
    ids: list[str] = []

    async def append() -> None:
        async with Tracker("dub", outbox=RedisOutbox(redis_url, prefix=prefix), deliver=False) as t:
            for i in range(40):
                ids.append((await t.track_lead(**LEAD, customer_external_id=f"u{i}")).event_id)

    asyncio.run(append())
    r = sync_redis(redis_url)
    stream, group = f"{prefix}:stream", "delivery"
    common = ["--store", redis_url, "--prefix", prefix, "--base-url", url, "--lease", "1.5"]
    a = start_worker(*common, "--consumer", "A")
    b = start_worker(*common, "--consumer", "B")
    try:

        def a_has_entries_in_flight() -> bool:
            pending = r.xpending_range(stream, group, "-", "+", 100, consumername="A")
            return bool(pending) and len(provider.requests) >= 4

        wait_until(a_has_entries_in_flight, "worker A to hold entries in flight")
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        mark = len(provider.requests)
        orphans = r.xpending_range(stream, group, "-", "+", 100, consumername="A")
        assert orphans, "A's entries were taken over before they could be inspected"
        orphan_ids = set()
        for entry in orphans:
            [(_, fields)] = r.xrange(stream, entry["message_id"], entry["message_id"])
            orphan_ids.add(json.loads(fields["row"])["event_id"])

        out, err = b.communicate(timeout=60)
        assert b.returncode == 0, err
        assert "DONE" in out
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
            p.communicate()
        r.close()
    assert a.returncode == -signal.SIGKILL
    # Every event reached the provider at least once, and only under its own key.
    counts = provider.count_by_idempotency_key()
    assert set(ids) <= set(counts)
    assert {req.idempotency_key for req in provider.requests} <= set(ids)
    # A's orphaned entries were delivered again after A died, so by B.
    after = {req.idempotency_key for req in provider.requests[mark:] if req.status == 200}
    assert orphan_ids <= after
    r = sync_redis(redis_url)
    try:
        assert r.xpending_range(stream, group, "-", "+", 100, consumername="A") == []
        assert r.xlen(stream) == 0 and r.zcard(f"{prefix}:retry") == 0
    finally:
        r.close()


async def test_an_unreachable_server_is_a_clear_error() -> None:
    store = RedisOutbox(f"redis://user:s3cret@127.0.0.1:{free_port()}/0")
    with pytest.raises(OutboxError, match="cannot use Redis outbox") as caught:
        await store.open()
    assert "s3cret" not in str(caught.value)  # the password never reaches a message


async def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(OutboxError, match=r"pip install 'asgi-attribution\[redis\]'"):
        await RedisOutbox("redis://127.0.0.1:6379/0").open()


def test_an_append_only_tracker_works_across_event_loops(redis_url: str, prefix: str) -> None:
    """A job runner calling asyncio.run per job with one module-level tracker.

    Run in its own process: the first loops' connections die with them, unclosed, which is
    that user's pattern, and their ResourceWarnings must not leak into other tests.
    """
    script = f"""
import asyncio
from asgi_attribution import Tracker
from asgi_attribution.transports import RedisOutbox

tracker = Tracker("dub", outbox=RedisOutbox({redis_url!r}, prefix={prefix!r}), deliver=False)

async def job(i):
    result = await tracker.track_lead(
        click_id="c", event_name="Sign up", customer_external_id=f"u{{i}}"
    )
    return result.accepted

async def status():
    store = RedisOutbox({redis_url!r}, prefix={prefix!r})
    await store.open()
    try:
        return (await store.status()).counts["pending"]
    finally:
        await store.close()

print([asyncio.run(job(i)) for i in range(3)], asyncio.run(status()))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[True, True, True] 3"


async def test_a_worker_that_lost_its_claim_does_not_record_an_outcome(
    redis_url: str, prefix: str
) -> None:
    slow = RedisOutbox(redis_url, prefix=prefix, consumer="slow")
    other = RedisOutbox(redis_url, prefix=prefix, consumer="other")
    await slow.open()
    await other.open()
    try:
        appender = Tracker("dub", outbox=slow, deliver=False)
        await appender.track_lead(**LEAD, customer_external_id="u1")
        [mine] = await slow.claim(10, lease=60)
        await asyncio.sleep(0.05)
        [theirs] = await other.claim(10, lease=0.01)  # "slow" stalled past its lease
        assert theirs.event_id == mine.event_id
        await slow.retry_later(mine, time.time() + 60, "late outcome")  # must not count
        status = await other.status()
        assert (status.counts["inflight"], status.counts["pending"]) == (1, 0)
        await other.delivered(theirs)
        status = await other.status()
        assert status.counts == {"pending": 0, "inflight": 0, "delivered": 1, "dead": 0}
    finally:
        await slow.close()
        await other.close()
