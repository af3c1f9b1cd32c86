"""The PostgreSQL outbox store against a real server: workers, leases, faults and the schema.

The server is the one ``scripts/test-postgres`` started (tests/support/postgres.py): skipped
with the reason on a developer's machine without it, a failure when ``CI`` is set. Each test
counts what it sent, what was delivered, and what was lost (always 0).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import OutboxError, OutboxTransport, RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider, Faults
from asgi_attribution.transports.outbox import open_store
from asgi_attribution.transports.outbox._postgres import PostgresOutbox, init_schema
from tests.support.asgi import KEY
from tests.support.postgres import restart_server, server_url, table_name
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio
WORKER = Path(__file__).parents[1] / "support" / "postgres_worker_app.py"
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=1, max_elapsed=60)
LEAD = {"click_id": "clk", "event_name": "Sign up"}


@pytest.fixture(scope="module")
def pg() -> str:
    return server_url()


def query(pg: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(pg, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []


async def append(pg: str, table: str, n: int, prefix: str = "u") -> list[str]:
    async with Tracker("dub", outbox=PostgresOutbox(pg, table=table), deliver=False) as app:
        results = await asyncio.gather(
            *(app.track_lead(**LEAD, customer_external_id=f"{prefix}{i}") for i in range(n))
        )
    assert all(r.durable and r.accepted for r in results)
    return [str(r.event_id) for r in results]


def start_worker(pg: str, table: str, name: str, url: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(WORKER), "--url", pg, "--table", table, "--worker", name]
    return subprocess.Popen(
        [*command, "--base-url", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_four_workers_deliver_2000_events_each_exactly_once(
    pg: str, provider: FakeProvider, url: str
) -> None:
    table = table_name()
    sent = asyncio.run(append(pg, table, 2000))
    workers = [
        start_worker(pg, table, f"w{i}", url, "--concurrency", "16", "--lease", "30")
        for i in range(4)
    ]
    outputs = []
    try:
        for p in workers:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err
            outputs.append(json.loads(out.split("DONE ", 1)[1]))
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
                p.communicate()
    delivered = provider.count_by_idempotency_key()
    lost = set(sent) - set(delivered)
    duplicates = {k: n for k, n in delivered.items() if n > 1}
    assert (len(sent), len(delivered), len(lost), duplicates) == (2000, 2000, 0, {})
    per_worker = [o["sent"] for o in outputs]
    assert sum(per_worker) == 2000 and all(n > 0 for n in per_worker), per_worker
    [(done,)] = query(pg, f"SELECT count(*) FROM {table} WHERE state = 'delivered'")
    assert done == 2000


def test_a_killed_workers_claims_are_delivered_by_another_after_the_lease(
    pg: str, provider: FakeProvider, url: str
) -> None:
    provider.faults = Faults(slow_rate=1.0, slow_seconds=0.3)  # A always holds rows in flight
    table = table_name()
    sent = asyncio.run(append(pg, table, 40))
    a = start_worker(pg, table, "A", url, "--lease", "1.5")
    b: subprocess.Popen[str] | None = None
    try:
        inflight = f"SELECT event_id FROM {table} WHERE state = 'inflight' AND lease_owner = 'A'"
        try:
            wait_until(lambda: bool(query(pg, inflight)) and len(provider.requests) >= 2, "claims")
        except AssertionError:
            a.kill()
            raise AssertionError(f"A held no claims; A's stderr: {a.communicate()[1]}") from None
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        mark = len(provider.requests)
        orphans = {r[0] for r in query(pg, inflight)}
        assert orphans, "A held no claim when it died"
        b = start_worker(pg, table, "B", url, "--lease", "1.5")
        out, err = b.communicate(timeout=60)
        assert b.returncode == 0, err
        assert "DONE" in out
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.communicate()
    assert a.returncode == -signal.SIGKILL
    delivered = provider.count_by_idempotency_key()
    assert set(sent) == set(delivered)  # lost: 0
    # A's orphaned rows went out again after A died (by B, after the lease); others once.
    after = {r.idempotency_key for r in provider.requests[mark:] if r.status == 200}
    assert orphans <= after
    assert all(n == 1 for k, n in delivered.items() if k not in orphans)
    assert query(pg, f"SELECT count(*) FROM {table} WHERE state <> 'delivered'") == [(0,)]


async def test_a_database_restart_mid_delivery_loses_nothing(
    pg: str, provider: FakeProvider, url: str
) -> None:
    provider.faults = Faults(slow_rate=1.0, slow_seconds=0.02)
    table = table_name()
    sent = await append(pg, table, 300)
    store = PostgresOutbox(pg, table=table, notify_wait=0.2)
    transport = OutboxTransport(
        store, api_key=KEY, base_url=url, retry=FAST, concurrency=8, lease=2.0, poll_interval=0.05
    )
    async with Tracker("dub", transport=transport) as tracker:
        while len(provider.requests) < 60:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(restart_server)
        # The same tracker appends again once the server is back (its pool reconnects).
        later = []
        for i in range(20):
            try:
                result = await tracker.track_lead(**LEAD, customer_external_id=f"later{i}")
            except Exception:
                await asyncio.sleep(0.2)  # the pool may still hold a connection of before
                result = await tracker.track_lead(**LEAD, customer_external_id=f"later{i}")
            later.append(str(result.event_id))
        await tracker.flush(timeout=60)
        status = await store.status()
    delivered = provider.count_by_idempotency_key()
    lost = set(sent + later) - set(delivered)
    assert (len(sent + later), len(lost)) == (320, 0)
    assert status.counts == {"pending": 0, "inflight": 0, "delivered": 320, "dead": 0}


async def test_dead_letters_retry_status_list_and_purge(
    pg: str, provider: FakeProvider, url: str
) -> None:
    table = table_name()
    ids = await append(pg, table, 3)
    async with PostgresOutbox(pg, table=table, notify_wait=0) as store:
        for row in await store.claim(10, lease=60):
            await store.dead(row, "HTTP 400 bad_request: final")
        dead = await store.list_dead()
        assert sorted(r.event_id for r in dead) == sorted(ids)
        assert all(r.last_error == "HTTP 400 bad_request: final" for r in dead)
        assert all(abs(r.created_at - store.now()) < 30 for r in dead)  # the store's clock
        assert (await store.status()).counts["dead"] == 3
        assert await store.retry_dead(ids[:1]) == 1
        status = await store.status()
        assert (status.counts["dead"], status.counts["pending"], status.healthy) == (2, 1, True)
        assert [r.event_id for r in await store.list("pending")] == ids[:1]
        assert await store.retry_dead() == 2
    good = PostgresOutbox(pg, table=table)
    async with Tracker("dub", api_key=KEY, base_url=url, outbox=good, retry=FAST) as worker:
        await worker.flush(timeout=20)
    async with PostgresOutbox(pg, table=table) as store:
        assert (await store.status()).counts == {
            "pending": 0,
            "inflight": 0,
            "delivered": 3,
            "dead": 0,
        }
        assert len(await store.list("delivered")) == 3
        assert await store.purge_delivered(3600) == 0
        assert await store.purge_delivered(0, batch=2) == 3
    assert set(provider.count_by_idempotency_key()) == set(ids)


async def test_a_worker_that_lost_its_claim_does_not_record_an_outcome(pg: str) -> None:
    table = table_name()
    await append(pg, table, 1)
    async with (
        PostgresOutbox(pg, table=table, worker="slow", notify_wait=0) as slow,
        PostgresOutbox(pg, table=table, worker="other", notify_wait=0) as other,
    ):
        [mine] = await slow.claim(10, lease=0.05)
        assert await other.claim(10, lease=60) == [] or pytest.fail("a live lease was taken")
        await asyncio.sleep(0.1)  # "slow" stalls past its lease (by the database clock)
        [theirs] = await other.claim(10, lease=60)
        assert theirs.event_id == mine.event_id and theirs.attempts == 2
        await slow.retry_later(mine, slow.now() + 60, "late outcome")  # must not count
        await slow.delivered(mine)
        status = await other.status()
        assert (status.counts["inflight"], status.counts["pending"]) == (1, 0)
        await other.delivered(theirs)
        status = await other.status()
        assert status.counts == {"pending": 0, "inflight": 0, "delivered": 1, "dead": 0}


async def test_the_schema_is_created_once_versioned_and_checked(pg: str) -> None:
    table = table_name("schema")
    versions = await asyncio.gather(*(init_schema(pg, f"app.{table}") for _ in range(4)))
    assert versions == [1, 1, 1, 1]  # concurrent first uses serialise on an advisory lock
    assert query(
        pg,
        "SELECT version FROM app.asgi_attribution_schema_version WHERE table_name = %s",
        (f"app.{table}",),
    ) == [(1,)]
    with pytest.raises(OutboxError, match="no outbox table"):
        await PostgresOutbox(pg, table=table_name(), create=False).open()
    query(
        pg,
        "UPDATE app.asgi_attribution_schema_version SET version = 99 WHERE table_name = %s",
        (f"app.{table}",),
    )
    with pytest.raises(OutboxError, match=r"schema version 99.*upgrade asgi-attribution"):
        await PostgresOutbox(pg, table=f"app.{table}").open()


async def test_a_postgresql_url_makes_a_working_tracker(
    pg: str, provider: FakeProvider, url: str
) -> None:
    query(pg, "DROP TABLE IF EXISTS asgi_attribution_outbox")
    assert isinstance(open_store(pg.replace("postgresql://", "postgres://", 1)), PostgresOutbox)
    async with Tracker("dub", api_key=KEY, base_url=url, outbox=pg, retry=FAST) as tracker:
        result = await tracker.track_lead(**LEAD, customer_external_id="u1")
        assert result.durable and result.accepted
        await tracker.flush(timeout=20)
    assert provider.count_by_idempotency_key() == {result.event_id: 1}


async def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    store = PostgresOutbox("postgresql://app:s3cret@127.0.0.1:9/app")
    with pytest.raises(OutboxError, match="cannot use PostgreSQL outbox") as caught:
        await store.open()
    assert "s3cret" not in str(caught.value)


async def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(OutboxError, match=r"pip install 'asgi-attribution\[postgres\]'"):
        await PostgresOutbox("postgresql://127.0.0.1/app").open()
