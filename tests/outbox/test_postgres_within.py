"""The transactional outbox: a lead appended inside the signup's transaction commits with it.

Against the real PostgreSQL server of ``scripts/test-postgres`` (see tests/support/postgres.py);
leads reach the fake provider through a real socket. Each test counts what it sent, what was
delivered and what was lost: nothing committed is ever lost, nothing rolled back is ever sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from asgi_attribution import DUB, LeadEvent, OutboxTransport, RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider
from asgi_attribution.transports._base import Delivery
from asgi_attribution.transports.outbox import PostgresOutbox, append_within
from asgi_attribution.transports.outbox._store import WITHIN_REASON
from tests.support.asgi import KEY
from tests.support.postgres import server_url, table_name, users_table

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=1, max_elapsed=30)


@pytest.fixture(scope="module")
def pg() -> str:
    return server_url()


@pytest.fixture
async def users(pg: str) -> AsyncIterator[str]:
    async for name in users_table(pg):
        yield name


def lead(user: str) -> Delivery:
    return Delivery(LeadEvent(click_id="clk", event_name="Sign up", customer_external_id=user), DUB)


def worker(pg: str, url: str, table: str, **options: Any) -> Tracker:
    store = PostgresOutbox(pg, table=table, notify_wait=0.5)
    transport = OutboxTransport(
        store, api_key=KEY, base_url=url, retry=FAST, poll_interval=0.05, **options
    )
    return Tracker("dub", transport=transport)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def count(pg: str, sql: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg) as conn:
        row = await (await conn.execute(sql)).fetchone()
        assert row is not None
        return int(row[0])


async def test_commit_publishes_once_and_rollback_sends_nothing(
    pg: str, users: str, provider: FakeProvider, url: str
) -> None:
    import psycopg

    table = table_name()
    async with worker(pg, url, table) as tracker:
        store = tracker.transport.store  # type: ignore[attr-defined]
        async with await psycopg.AsyncConnection.connect(pg) as conn:
            # Committed: the user and the lead together.
            alice = lead("alice")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {users} (email) VALUES ('alice')")
                result = await append_within(store, alice, conn)
                assert (result.status, result.durable, result.accepted) == ("queued", False, False)
                assert result.reason == WITHIN_REASON
                await asyncio.sleep(0.3)  # a worker is listening: it must not see the row yet
                assert provider.requests == []
                assert not await store.is_stored(alice.event.event_id)
            committed = time.monotonic()
            assert await store.is_stored(alice.event.event_id)  # durable from the commit on
            key = alice.event.event_id
            await eventually(lambda: key in provider.count_by_idempotency_key(), "the lead")
            latency = time.monotonic() - committed
            # Rolled back: neither the user nor the lead exists.
            bob = lead("bob")
            async with conn.transaction(force_rollback=True):
                await conn.execute(f"INSERT INTO {users} (email) VALUES ('bob')")
                await append_within(store, bob, conn)
            # Without autocommit psycopg opens the transaction; the caller's commit ends it.
            await conn.set_autocommit(False)
            carol = lead("carol")
            await append_within(store, carol, conn)
            await conn.rollback()
        await tracker.flush(timeout=20)
        status = await store.status()
    assert latency < 1.0, f"NOTIFY should wake the worker at commit, took {latency:.2f}s"
    assert provider.count_by_idempotency_key() == {key: 1}  # delivered once, nothing else sent
    assert status.counts == {"pending": 0, "inflight": 0, "delivered": 1, "dead": 0}
    assert await count(pg, f"SELECT count(*) FROM {users}") == 1


async def test_a_sqlalchemy_session_and_connection_commit_the_lead_with_their_rows(
    pg: str, users: str, provider: FakeProvider, url: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    engine = create_async_engine(pg.replace("postgresql://", "postgresql+psycopg://", 1))
    sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    table = table_name()
    sent: list[str] = []
    try:
        async with worker(pg, url, table) as tracker:
            store = tracker.transport.store  # type: ignore[attr-defined]
            # The FastAPI shape: a session per request, one commit for the user and the lead.
            async with sessions() as session:
                await session.execute(text(f"INSERT INTO {users} (email) VALUES ('dana')"))
                delivery = lead("dana")
                await append_within(store, delivery, session)
                await session.commit()
                sent.append(delivery.event.event_id)
            async with sessions() as session:
                await session.execute(text(f"INSERT INTO {users} (email) VALUES ('eve')"))
                await append_within(store, lead("eve"), session)
                await session.rollback()
            async with engine.begin() as conn:  # an AsyncConnection, committed on exit
                delivery = lead("fay")
                await append_within(store, delivery, conn)
                sent.append(delivery.event.event_id)
            async with engine.connect() as conn:  # no transaction yet: begun as autobegin does
                delivery = lead("gil")
                await append_within(store, delivery, conn)
                await conn.commit()
                sent.append(delivery.event.event_id)
            await tracker.flush(timeout=20)
    finally:
        await engine.dispose()
    delivered = provider.count_by_idempotency_key()
    assert delivered == dict.fromkeys(sent, 1)
    assert await count(pg, f"SELECT count(*) FROM {users}") == 1


async def test_anything_else_is_refused_with_the_accepted_types(pg: str, tmp_path: Any) -> None:
    import psycopg

    store = PostgresOutbox(pg, table=table_name())
    try:
        with pytest.raises(TypeError, match=r"psycopg\.AsyncConnection, or a SQLAlchemy"):
            await append_within(store, lead("u"), "postgresql://db")
        with psycopg.connect(pg) as sync_conn, pytest.raises(TypeError, match="AsyncSession"):
            await append_within(store, lead("u"), sync_conn)
        async with await psycopg.AsyncConnection.connect(pg, autocommit=True) as conn:
            with pytest.raises(ValueError, match="would commit on its own"):
                await append_within(store, lead("u"), conn)
        sqlite = Tracker("dub", outbox=str(tmp_path / "events.db"), deliver=False)
        with pytest.raises(TypeError, match=r"SQLiteOutbox cannot"):
            await append_within(sqlite.transport.store, lead("u"), conn)  # type: ignore[attr-defined]
        assert (await store.status()).counts["pending"] == 0
    finally:
        await store.close()


async def test_fifty_concurrent_signups_each_deliver_once(
    pg: str, users: str, provider: FakeProvider, url: str
) -> None:
    from psycopg_pool import AsyncConnectionPool

    table = table_name()
    async with (
        AsyncConnectionPool(pg, min_size=10, max_size=20, open=False) as app_db,
        worker(pg, url, table, concurrency=20) as tracker,
    ):
        store = tracker.transport.store  # type: ignore[attr-defined]

        async def signup(i: int) -> str:
            async with app_db.connection() as conn, conn.transaction():
                await conn.execute(f"INSERT INTO {users} (email) VALUES (%s)", (f"u{i}",))
                delivery = lead(f"u{i}")
                await append_within(store, delivery, conn)
                if i % 10 == 9:
                    raise LookupError("this signup fails after its append")  # rolled back
            return delivery.event.event_id

        outcomes = await asyncio.gather(*(signup(i) for i in range(50)), return_exceptions=True)
        committed = [o for o in outcomes if isinstance(o, str)]
        # And 50 at once through the tracker (each its own commit, batched).
        own = await asyncio.gather(
            *(
                tracker.track_lead(
                    click_id="clk", event_name="Sign up", customer_external_id=f"t{i}"
                )
                for i in range(50)
            )
        )
        assert all(r.durable for r in own)
        await tracker.flush(timeout=30)
    sent = set(committed) | {r.event_id for r in own}
    delivered = provider.count_by_idempotency_key()
    lost = sent - set(delivered)
    assert (len(committed), len(sent), len(lost)) == (45, 95, 0)
    assert set(delivered) == sent and set(delivered.values()) == {1}  # no rolled-back lead sent
    assert await count(pg, f"SELECT count(*) FROM {users}") == 45
