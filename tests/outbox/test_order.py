"""A sale never races its lead in an outbox (issue 27, item 2): two workers deliver one outbox
(SQLite, Redis, PostgreSQL) while the app stores a lead then a sale per customer back to back.

The provider (fake, real sockets) shows async leads to sales only after 3 s, behind a proxy
that slows every lead's answer; the proxy's log of request starts and ends gives the order and
the overlap (never the clock). Each row of the scenario counts sent, delivered, duplicates,
reported and silently lost (always 0).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import PostgresOutbox, RedisOutbox, SQLiteOutbox, Tracker
from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.transports.outbox import OutboxStore
from tests.support.asgi import KEY
from tests.test_causal_order import FAST, Count, Tally, Watch, count, recorded_sales, track_pairs

from .conftest import DURABLE
from .servers import RedisServer

pytestmark = pytest.mark.anyio
CUSTOMERS = 20


def stores(backend: str, tmp_path: Path, redis_server: Callable[..., RedisServer]) -> Any:
    """A maker of store instances over one outbox: each worker opens its own."""
    if backend == "sqlite":
        path = str(tmp_path / "events.db")
        return lambda: SQLiteOutbox(path)
    if backend == "redis":
        url, prefix = redis_server(*DURABLE).url, f"order-{uuid.uuid4().hex[:8]}"
        return lambda: RedisOutbox(url, prefix=prefix)
    from tests.support.postgres import server_url, table_name

    pg, table = server_url(), table_name("order")
    return lambda: PostgresOutbox(pg, table=table)


async def deliver_with_two_workers(
    name: str, make: Callable[[], OutboxStore], caplog: Any, **lead: Any
) -> tuple[FakeProvider, Watch, list[str], Count]:
    provider = FakeProvider(name, api_key=KEY, lead_delay=3.0)  # type: ignore[arg-type]
    watch = Watch(provider)
    tally = Tally()
    users = [f"u{i}" for i in range(CUSTOMERS)]
    with serve_in_thread(watch) as url:
        workers = [
            Tracker(
                name,
                api_key=KEY,
                base_url=url,
                outbox=make(),
                concurrency=10,
                retry=FAST,
                on_delivered=tally.on_delivered,
                on_error=tally.on_error,
            )
            for _ in range(2)
        ]
        app = Tracker(name, api_key=KEY, base_url=url, outbox=make(), deliver=False)
        async with workers[0], workers[1], app:
            sent = await track_pairs(app, users, **lead)
            for worker in workers:
                await worker.flush(timeout=120)
            for worker in workers:  # the other worker may have taken rows after one's flush
                await worker.flush(timeout=120)
    return provider, watch, users, count(sent, tally, caplog)


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
@pytest.mark.parametrize("name", ["dub", "pimms"])
async def test_two_workers_send_each_sale_after_its_lead(
    name: str,
    backend: str,
    tmp_path: Path,
    redis_server: Callable[..., RedisServer],
    caplog: Any,
) -> None:
    make = stores(backend, tmp_path, redis_server)
    provider, watch, users, row = await deliver_with_two_workers(name, make, caplog)
    assert row == Count(2 * CUSTOMERS, 2 * CUSTOMERS, 0, 0, 0), row
    assert recorded_sales(provider) == {f"in_{u}" for u in users}
    assert watch.refused_sales() == []  # none refused "lead not found", none answered nulls
    assert all(watch.lead_done_before_sale(u) for u in users)
    assert set(watch.modes.values()) == {"wait"}  # leads from an outbox go with mode="wait"
    assert watch.overlap_while_leads_fly() >= 5, watch.most_in_flight  # other customers flow


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
async def test_an_explicit_async_lead_keeps_its_mode_in_an_outbox(
    backend: str, tmp_path: Path, redis_server: Callable[..., RedisServer], caplog: Any
) -> None:
    make = stores(backend, tmp_path, redis_server)
    provider, watch, users, row = await deliver_with_two_workers("dub", make, caplog, mode="async")
    assert row == Count(2 * CUSTOMERS, 2 * CUSTOMERS, 0, 0, 0), row
    assert set(watch.modes.values()) == {"async"}
    assert all(watch.lead_done_before_sale(u) for u in users)
    assert recorded_sales(provider) == {f"in_{u}" for u in users}  # retried until Dub shows it
