"""``within=`` on asyncpg: an ``asyncpg.Connection`` (or a pool's connection) inside a
transaction, and SQLAlchemy ``AsyncSession`` / ``AsyncConnection`` on ``postgresql+asyncpg``.

Against the real PostgreSQL server of ``scripts/test-postgres`` (tests/support/postgres.py);
leads reach the fake provider through a real socket. Each case counts what was committed
(sent), delivered, delivered twice, refused to its caller by an error naming the event
(reported) and silently lost (always 0); nothing rolled back is ever sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_attribution import (
    DUB,
    AttributionMiddleware,
    LeadEvent,
    OutboxError,
    OutboxTransport,
    RetryPolicy,
    Tracker,
    track_lead,
)
from asgi_attribution.testing import FakeProvider
from asgi_attribution.transports import Delivery
from asgi_attribution.transports.outbox import PostgresOutbox, append_within

from .support.asgi import KEY, client_for
from .support.postgres import server_url, table_name, users_table

asyncpg = pytest.importorskip("asyncpg")
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
    store = PostgresOutbox(pg, table=table, notify_wait=0.5, **options)
    transport = OutboxTransport(store, api_key=KEY, base_url=url, retry=FAST, poll_interval=0.05)
    return Tracker("dub", transport=transport)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def scalar(pg: str, sql: str) -> Any:
    conn = await asyncpg.connect(pg)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def table_row(scenario: str, sent: set[str], delivered: dict[str, int], reported: int) -> str:
    dup = sum(n - 1 for n in delivered.values())
    lost = len(sent - set(delivered))
    got = len(set(delivered) & sent)
    row = f"| {scenario} | {len(sent)} | {got} | {dup} | {reported} | {lost} |"
    print(row)
    return row


async def test_an_asyncpg_connection_commits_the_lead_with_the_signup_or_not_at_all(
    pg: str, users: str, provider: FakeProvider, url: str
) -> None:
    """The endpoint shape: ``track_lead(request, ..., within=conn)`` on an asyncpg connection."""
    table = table_name()
    tracker = worker(pg, url, table)

    async def signup(request: Request) -> Response:
        form = await request.json()
        conn = await asyncpg.connect(pg)
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {users} (email) VALUES ($1)", form["email"])
                result = await track_lead(
                    request, "Sign up", customer_external_id=form["email"], within=conn
                )
                if form.get("fail"):
                    raise RuntimeError("the signup fails after the lead was appended")
        except RuntimeError:
            return JSONResponse({"status": "rolled back"}, status_code=500)
        finally:
            await conn.close()
        return JSONResponse({"id": result.event_id, "durable": result.durable})

    app = AttributionMiddleware(
        Starlette(routes=[Route("/signup", signup, methods=["POST"])]), tracker
    )
    cookie = {"cookie": "dub_id=clk_apg"}
    async with client_for(app) as client:
        kept = await client.post("/signup", json={"email": "ada@example.com"}, headers=cookie)
        committed = time.monotonic()
        key = kept.json()["id"]
        await eventually(lambda: key in provider.count_by_idempotency_key(), "the lead")
        latency = time.monotonic() - committed
        lost = await client.post(
            "/signup", json={"email": "bob@example.com", "fail": True}, headers=cookie
        )
        await tracker.flush(timeout=20)
        status = await tracker.transport.store.status()  # type: ignore[attr-defined]
    assert kept.json()["durable"] is False  # durable only once the caller's commit returned
    assert lost.status_code == 500
    delivered = provider.count_by_idempotency_key()
    table_row("asyncpg: 1 commit, 1 rollback", {key}, delivered, 0)
    assert delivered == {key: 1}
    assert [lead["clickId"] for lead in provider.leads()] == ["clk_apg"]
    # The trigger's NOTIFY fires at an asyncpg commit too: the worker wakes, it does not poll.
    assert latency < 5.0, f"NOTIFY should wake the worker at commit, took {latency:.2f}s"
    assert status.counts == {"pending": 0, "inflight": 0, "delivered": 1, "dead": 0}
    assert await scalar(pg, f"SELECT count(*) FROM {users}") == 1


async def test_a_pool_connection_commits_and_one_outside_a_transaction_is_refused(
    pg: str, users: str, provider: FakeProvider, url: str
) -> None:
    table = table_name()
    sent: set[str] = set()
    async with (
        worker(pg, url, table) as tracker,
        asyncpg.create_pool(pg, min_size=1, max_size=4) as pool,
    ):
        store = tracker.transport.store  # type: ignore[attr-defined]
        async with pool.acquire() as conn:  # a PoolConnectionProxy
            delivery = lead("carol")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {users} (email) VALUES ('carol')")
                result = await append_within(store, delivery, conn)
                await asyncio.sleep(0.3)  # a worker is listening: it must not see the row yet
                assert provider.requests == []
            sent.add(delivery.event.event_id)
            assert (result.status, result.durable) == ("queued", False)
            tr = conn.transaction()
            await tr.start()
            await append_within(store, lead("dan"), conn)
            await tr.rollback()
            # Outside a transaction asyncpg commits every statement on its own: refused.
            with pytest.raises(ValueError, match=r"asyncpg connection has no transaction open"):
                await append_within(store, lead("eve"), conn)
        await tracker.flush(timeout=20)
        status = await store.status()
    delivered = provider.count_by_idempotency_key()
    table_row("asyncpg pool: 1 commit, 1 rollback, 1 refused", sent, delivered, 1)
    assert delivered == dict.fromkeys(sent, 1)
    assert status.counts == {"pending": 0, "inflight": 0, "delivered": 1, "dead": 0}


async def test_sqlalchemy_on_asyncpg_commits_the_lead_with_its_rows(
    pg: str, users: str, provider: FakeProvider, url: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    engine = create_async_engine(pg.replace("postgresql://", "postgresql+asyncpg://", 1))
    sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    table = table_name()
    sent: set[str] = set()
    try:
        async with worker(pg, url, table) as tracker:
            store = tracker.transport.store  # type: ignore[attr-defined]
            async with sessions() as session:  # the FastAPI shape: one commit for both rows
                await session.execute(text(f"INSERT INTO {users} (email) VALUES ('fay')"))
                delivery = lead("fay")
                await append_within(store, delivery, session)
                await session.commit()
                sent.add(delivery.event.event_id)
            async with sessions() as session:
                await session.execute(text(f"INSERT INTO {users} (email) VALUES ('gus')"))
                await append_within(store, lead("gus"), session)
                await session.rollback()
            # No statement before the append: SQLAlchemy's adapter has not yet begun asyncpg's
            # transaction, which must be begun first or the row would commit on its own.
            async with sessions() as session:
                await append_within(store, lead("hal"), session)
                await session.rollback()
            async with engine.begin() as conn:  # an AsyncConnection, committed on exit
                delivery = lead("ivy")
                await append_within(store, delivery, conn)
                sent.add(delivery.event.event_id)
            async with engine.connect() as conn:  # no transaction yet: begun as autobegin does
                delivery = lead("jon")
                await append_within(store, delivery, conn)
                await conn.commit()
                sent.add(delivery.event.event_id)
            async with engine.connect() as conn:
                await append_within(store, lead("kim"), conn)
                await conn.rollback()
            autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
            async with autocommit.connect() as conn:
                with pytest.raises(ValueError, match="would commit on its own"):
                    await append_within(store, lead("lea"), conn)
            await tracker.flush(timeout=20)
            status = await store.status()
    finally:
        await engine.dispose()
    delivered = provider.count_by_idempotency_key()
    table_row("SQLAlchemy+asyncpg: 3 commits, 3 rollbacks, 1 refused", sent, delivered, 1)
    assert delivered == dict.fromkeys(sent, 1)
    assert status.counts == {"pending": 0, "inflight": 0, "delivered": 3, "dead": 0}
    assert await scalar(pg, f"SELECT count(*) FROM {users}") == 1


async def test_an_asyncpg_insert_waits_on_a_locked_table_no_longer_than_append_timeout(
    pg: str,
) -> None:
    table = table_name()
    store = PostgresOutbox(pg, table=table, append_timeout=0.5)
    tracker = Tracker("dub", api_key=KEY, outbox=store, deliver=False)
    await tracker.start()
    blocker = await asyncpg.connect(pg)
    conn = await asyncpg.connect(pg)
    blocking = blocker.transaction()
    try:
        await conn.execute("SET statement_timeout = '7s'")
        async with conn.transaction():  # without a lock: stored, the caller's setting is back
            await tracker.track_lead(
                click_id="c", event_name="Sign up", customer_external_id="a", within=conn
            )
            shown = await conn.fetchval("SHOW statement_timeout")
        assert shown == "7s"
        await blocking.start()
        await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        tr = conn.transaction()
        await tr.start()
        with pytest.raises(OutboxError, match="append_timeout") as refused:
            await asyncio.wait_for(
                tracker.track_lead(
                    click_id="c", event_name="Sign up", customer_external_id="u", within=conn
                ),
                30,
            )
        waited = time.monotonic() - started
        await tr.rollback()  # the caller's transaction is usable for its rollback...
        assert await conn.fetchval("SELECT 1") == 1  # ...and the connection after it
    finally:
        await blocking.rollback()
        await blocker.close()
        await conn.close()
        await tracker.aclose()
    message = str(refused.value)
    assert "roll back" in message and "not inserted within append_timeout" in message
    assert waited < 25  # bounded by append_timeout (0.5 s) on a loaded machine, not hung
    assert await scalar(pg, f"SELECT count(*) FROM {table}") == 1  # "a" only
