"""``track_lead(request, ..., within=conn)`` from a real endpoint: the lead commits with the
signup's own rows in PostgreSQL, or not at all. Real ASGI requests, a real PostgreSQL server
(``scripts/test-postgres``), and a real socket to the fake provider."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_attribution import (
    AttributionMiddleware,
    MemoryTransport,
    RetryPolicy,
    Tracker,
    track_lead,
)
from asgi_attribution.testing import FakeProvider

from .support.asgi import KEY, client_for
from .support.postgres import server_url, table_name, users_table

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pg() -> str:
    return server_url()


@pytest.fixture
async def users(pg: str) -> AsyncIterator[str]:
    async for name in users_table(pg):
        yield name


def signup_site(pg: str, users: str, tracker: Tracker) -> Any:
    import psycopg

    async def signup(request: Request) -> Response:
        form = await request.json()
        async with await psycopg.AsyncConnection.connect(pg) as conn:
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {users} (email) VALUES (%s)", (form["email"],))
                    result = await track_lead(
                        request, "Sign up", customer_external_id=form["email"], within=conn
                    )
                    if form.get("fail"):
                        raise RuntimeError("the signup fails after the lead was appended")
            except RuntimeError:
                return JSONResponse({"status": "rolled back"}, status_code=500)
        return JSONResponse({"status": result.status, "durable": result.durable})

    return AttributionMiddleware(
        Starlette(routes=[Route("/signup", signup, methods=["POST"])]), tracker
    )


async def test_the_lead_commits_with_the_signup_or_not_at_all(
    pg: str, users: str, provider: FakeProvider, url: str
) -> None:
    from asgi_attribution.transports.outbox._postgres import PostgresOutbox

    store = PostgresOutbox(pg, table=table_name("outbox"), notify_wait=0.5)
    fast = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    tracker = Tracker("dub", api_key=KEY, base_url=url, outbox=store, retry=fast)
    cookie = {"cookie": "dub_id=clk_pg"}
    async with client_for(signup_site(pg, users, tracker)) as client:
        kept = await client.post("/signup", json={"email": "ada@example.com"}, headers=cookie)
        lost = await client.post(
            "/signup", json={"email": "bob@example.com", "fail": True}, headers=cookie
        )
        deadline = time.monotonic() + 20
        while not provider.leads() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    # Durable only once the caller's commit returned: the result says so honestly.
    assert kept.json() == {"status": "queued", "durable": False}
    assert lost.status_code == 500
    assert [lead["customerExternalId"] for lead in provider.leads()] == ["ada@example.com"]
    assert [lead["clickId"] for lead in provider.leads()] == ["clk_pg"]


async def test_within_without_a_postgresql_outbox_is_a_clear_error() -> None:
    tracker = Tracker("dub", transport=MemoryTransport())
    with pytest.raises(TypeError, match=re.escape("needs Tracker(outbox='postgresql://...')")):
        tracker.track_lead(
            click_id="c1", event_name="Sign up", customer_external_id="u1", within=object()
        )


async def test_within_on_an_outbox_whose_store_cannot_join_a_transaction_is_a_clear_error(
    tmp_path: Path,
) -> None:
    tracker = Tracker("dub", api_key="dub_test", outbox=tmp_path / "events.db")
    with pytest.raises(TypeError, match=r"track_sale\(within=\.\.\.\): .*SQLiteOutbox cannot"):
        tracker.track_sale(customer_external_id="u1", amount=100, within=object())
    assert tracker.stats.queued == 0  # refused at the call: nothing was accepted
