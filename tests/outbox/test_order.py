"""A sale never races its lead, nor a refund its sale, in an outbox (issue 27, item 2): two
workers deliver one outbox (SQLite, Redis, PostgreSQL) while the app stores a lead, a sale (and
a refund) per customer back to back.

The provider (fake, real sockets) shows async leads to sales only after 3 s, behind a proxy
that slows every lead's answer; the proxy's log of request starts and ends gives the order and
the overlap (never the clock). Each row of the scenario counts sent, delivered, duplicates,
reported and silently lost (always 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import (
    DeliveryError,
    PostgresOutbox,
    RedisOutbox,
    RetryPolicy,
    SQLiteOutbox,
    Tracker,
)
from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.transports.outbox import OutboxStore
from tests.support.asgi import KEY
from tests.test_causal_order import (
    FAST,
    Count,
    Tally,
    Watch,
    check_refunds,
    count,
    recorded_sales,
    refunded,
    track_pairs,
    track_triples,
)

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
    name: str, make: Callable[[], OutboxStore], caplog: Any, *, refunds: bool = False, **lead: Any
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
            if refunds:
                sent = await track_triples(app, users)
            else:
                sent = await track_pairs(app, users, **lead)
            for worker in workers:
                await worker.flush(timeout=120)
            for worker in workers:  # the other worker may have taken rows after one's flush
                await worker.flush(timeout=120)
    if refunds:
        check_refunds(provider, watch, tally, users)
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


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
async def test_two_workers_send_each_refund_after_its_sale(
    backend: str, tmp_path: Path, redis_server: Callable[..., RedisServer], caplog: Any
) -> None:
    make = stores(backend, tmp_path, redis_server)
    provider, watch, users, row = await deliver_with_two_workers("dub", make, caplog, refunds=True)
    # check_refunds: each recorded on its first lookup, after its sale; none "no_commission".
    assert row == Count(3 * CUSTOMERS, 3 * CUSTOMERS, 0, 0, 0), row
    assert recorded_sales(provider) == {f"in_{u}" for u in users}
    assert watch.refused_sales() == []
    assert all(watch.lead_done_before_sale(u) for u in users)
    assert watch.overlap_while_leads_fly() >= 5, watch.most_in_flight  # other customers flow


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
async def test_a_dead_sale_releases_its_refund_and_a_held_chain_holds_no_other_invoice(
    backend: str, tmp_path: Path, redis_server: Callable[..., RedisServer], caplog: Any
) -> None:
    # "lost": a direct sale on a disabled link is dead at once (404 link_disabled); its refund is
    # then claimed, finds no commission and ends "no_commission". "held": its lead stays on the
    # wire (within one attempt's timeout) until "fine" is refunded and "lost"'s refund released,
    # so its sale and refund wait meanwhile.
    caplog.set_level(logging.INFO, logger="asgi_attribution")
    make = stores(backend, tmp_path, redis_server)
    provider = FakeProvider("dub", api_key=KEY, disabled_clicks={"clk_off"})
    watch = Watch(provider, lead_seconds=0.05, gated="held")
    tally = Tally()
    short = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, max_retry_after=1, max_elapsed=8)
    with serve_in_thread(watch) as url:
        workers = [
            Tracker(
                "dub",
                api_key=KEY,
                base_url=url,
                outbox=make(),
                retry=short,
                timeout=60,
                on_delivered=tally.on_delivered,
                on_error=tally.on_error,
                on_drop=tally.on_drop,
            )
            for _ in range(2)
        ]
        app = Tracker("dub", api_key=KEY, base_url=url, outbox=make(), deliver=False)
        async with workers[0], workers[1], app:
            sent = await track_triples(app, ["held"])
            sale = await app.track_sale(
                customer_external_id="lost", amount=4900, invoice_id="in_lost", click_id="clk_off"
            )
            refund = await app.refund_sale(invoice_id="in_lost")
            sent += [sale.event_id or "", refund.event_id or ""]
            sent += await track_triples(app, ["fine"])
            for _ in range(3000):
                if watch.lookups("in_lost") and refunded(provider, ["fine"]):
                    break
                await asyncio.sleep(0.02)
            assert not watch.answered("sale", "held") and watch.lookups("in_held") == 0
            watch.gate.set()
            # A flush does not wait for a retry not yet due: wait for every event to end.
            for _ in range(6000):
                if set(sent) <= {*tally.delivered, *tally.errors}:
                    break
                await asyncio.sleep(0.02)
            for worker in [*workers, *workers]:
                await worker.flush(timeout=60)
    failed = tally.errors.get(sale.event_id or "")
    assert isinstance(failed, DeliveryError) and failed.code == "link_disabled", failed
    assert watch.refund_after_sale("lost")  # held until the sale was dead, then released
    # The refund finds no commission. Each worker's commission window starts at its own first
    # lookup, so when the two workers take turns the row's retry budget can end first: then it
    # is a dead letter ("commission_pending", reported by id) instead of "no_commission".
    result = tally.results.get(refund.event_id or "")
    if result is None:
        dead = tally.errors.get(refund.event_id or "")
        assert isinstance(dead, DeliveryError) and dead.code == "commission_pending", dead
        ended = Count(8, 6, 0, 2, 0)
    else:
        assert (result.outcome, result.outcome_reason) == ("not_recorded", "no_commission")
        ended = Count(8, 7, 0, 1, 0)
    check_refunds(provider, watch, tally, ["held", "fine"], excluded={refund.event_id})
    assert count(sent, tally, caplog) == ended


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_outbox_made_before_the_refund_order_gets_its_index_at_open(
    backend: str, tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    # A file or table the customer rule made has no index of unfinished sales per invoice:
    # opening it adds one (no schema version bump), so the refund's claim can look it up.
    make = stores(backend, tmp_path, redis_server)

    async def append() -> None:
        async with Tracker("dub", api_key=KEY, outbox=make(), deliver=False) as app:
            await app.track_sale(customer_external_id="u", amount=100, invoice_id="in_u")

    await append()
    store = make()
    if isinstance(store, SQLiteOutbox):
        path = str(tmp_path / "events.db")
        found = "SELECT count(*) FROM sqlite_master WHERE name = 'outbox_open_sales'"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("DROP INDEX outbox_open_sales")
            conn.commit()
        await append()
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute(found).fetchone() == (1,)
        return
    import psycopg

    assert isinstance(store, PostgresOutbox)
    from tests.support.postgres import server_url

    name = f"{store.tables.channel}_open_sales"
    async with await psycopg.AsyncConnection.connect(server_url(), autocommit=True) as conn:
        await conn.execute(f'DROP INDEX "{name}"')
        await append()
        cur = await conn.execute("SELECT to_regclass(%s)", (f'"{name}"',))
        assert (await cur.fetchone()) == (name,)
