"""Answers about one event end that event, and only that event (issue 27, item 1).

Through real sockets to the fake provider (uvicorn in a thread), which answers as Dub's route
handlers do: a 4xx with the JSON error envelope is about its event (final, or retried when it
may pass) and never pauses; a 404 without the envelope (Next.js' HTML page for a path with no
route) still pauses and resumes; an event that keeps meeting a fault while the others go
through is failed after :data:`STRIKES` pauses. Each attack counts sent, delivered, duplicates,
reported (by id: log line and callback) and silently lost, and asserts silently lost == 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from asgi_attribution import (
    DUB,
    PIMMS,
    BackgroundTransport,
    Delivery,
    DeliveryError,
    HTTPTransport,
    LeadEvent,
    RetryPolicy,
    SaleEvent,
    Tracker,
)
from asgi_attribution._events import RefundEvent
from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.transports import DeliveryRecord, OutboxTransport, SQLiteOutbox
from asgi_attribution.transports._pause import STRIKES
from tests.support.asgi import KEY

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=0.2, max_elapsed=30)


def lead(user: str, click_id: str = "clk_ok", name: str = "Sign up") -> Delivery:
    return Delivery(LeadEvent(click_id=click_id, event_name=name, customer_external_id=user), DUB)


@dataclass
class Tally:
    """What happened to each event id: reported (callback, and a log line naming it) or not."""

    errors: dict[str, Exception] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    records: list[DeliveryRecord] = field(default_factory=list)

    def on_error(self, delivery: Delivery, exc: Exception) -> None:
        self.errors[delivery.event.event_id] = exc

    def on_drop(self, delivery: Delivery, reason: str) -> None:
        self.dropped.append(delivery.event.event_id)

    def kinds(self, kind: str) -> int:
        return sum(record.kind == kind for record in self.records)

    def row(self, sent: list[str], provider: FakeProvider) -> dict[str, int]:
        """The attack's counts: ``sent`` event ids against the leads the provider recorded."""
        customers = [lead["customerExternalId"] for lead in provider.leads()]
        reported = set(self.errors) | set(self.dropped)
        row = {
            "sent": len(sent),
            "delivered": len(set(customers)),
            "dup": len(customers) - len(set(customers)),  # a lead recorded twice
            "reported": len(reported),
            "lost": len(sent) - len(set(customers)) - len(reported),
        }
        print(row)
        return row


@asynccontextmanager
async def background(
    app: Any, tally: Tally, retry: RetryPolicy = FAST, **options: Any
) -> AsyncIterator[BackgroundTransport]:
    """A started BackgroundTransport to ``app`` served on a real socket, reporting to ``tally``;
    closed (its drain run) on the way out, before the server stops."""
    with serve_in_thread(app) as url:
        transport = BackgroundTransport(
            HTTPTransport(KEY, base_url=url, retry=retry),
            on_error=tally.on_error,
            on_drop=tally.on_drop,
            **options,
        )
        transport.stats.subscribe(tally.records.append)
        await transport.start()
        try:
            yield transport
        finally:
            await transport.aclose()


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait (bounded, generous: the machine is shared) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def received(provider: FakeProvider, user: str) -> int:
    """Requests the provider answered for customer ``user``."""
    return sum(
        (r.body or {}).get("customerExternalId") == user for r in provider.requests if r.body
    )


def logged(caplog: Any, event_id: str) -> bool:
    return any(event_id in r.getMessage() and r.levelno >= logging.ERROR for r in caplog.records)


# -- a disabled link's lead is final; the 50 behind it go on ----------------------------------


async def test_a_disabled_link_lead_is_final_while_50_leads_behind_it_are_delivered(
    caplog: Any,
) -> None:
    provider = FakeProvider("dub", api_key=KEY, disabled_clicks={"clk_off"})
    tally = Tally()
    # A pause would hold everyone for a minute: the test would fail on its flush bound.
    async with background(provider, tally, concurrency=1, pause_interval=60.0) as transport:
        # concurrency=1: the 50 are strictly behind it.
        bad = await transport.send(lead("u_off", click_id="clk_off"))
        sent = [bad.event_id] + [(await transport.send(lead(f"u{i}"))).event_id for i in range(50)]
        await transport.flush(timeout=30)
    row = tally.row(sent, provider)
    assert row == {"sent": 51, "delivered": 50, "dup": 0, "reported": 1, "lost": 0}
    assert transport.stats.duplicates == 0
    error = tally.errors[bad.event_id]
    assert isinstance(error, DeliveryError) and not error.retryable
    assert (error.code, error.status_code) == ("link_disabled", 404)
    assert not getattr(error, "integration", False)
    assert logged(caplog, bad.event_id)
    assert tally.kinds("paused") == 0 and not transport.paused
    assert received(provider, "u_off") == 1  # sent once: final, not re-queued


@pytest.mark.parametrize(
    ("options", "delivery", "reason"),
    [
        ({"foreign_clicks": {"clk_x"}}, lead("u1", click_id="clk_x"), "link_not_in_workspace"),
        ({"known_clicks": {"clk_ok"}}, lead("u1", click_id="clk_gone"), "click_not_found"),
        ({"program": False}, Delivery(RefundEvent(invoice_id="in_1"), DUB), "no_program"),
    ],
)
async def test_per_event_404s_are_final_with_their_reason_and_never_pause(
    options: dict[str, Any], delivery: Delivery, reason: str
) -> None:
    provider = FakeProvider("dub", api_key=KEY, **options)
    tally = Tally()
    async with background(provider, tally, pause_interval=60.0) as transport:
        sent = [(await transport.send(delivery)).event_id]
        sent += [(await transport.send(lead(f"ok{i}"))).event_id for i in range(5)]
        await transport.flush(timeout=30)
    [(event_id, error)] = tally.errors.items()
    assert event_id == sent[0] and isinstance(error, DeliveryError)
    assert (error.code, error.retryable) == (reason, False)
    assert len(provider.leads()) == 5 and tally.kinds("paused") == 0
    assert tally.row(sent, provider) == {
        "sent": 6,
        "delivered": 5,
        "dup": 0,
        "reported": 1,
        "lost": 0,
    }


async def test_a_sale_on_a_link_disabled_after_its_lead_is_final() -> None:
    provider = FakeProvider("dub", api_key=KEY)
    with serve_in_thread(provider) as url:
        async with Tracker("dub", api_key=KEY, base_url=url, background=False) as tracker:
            signup = await tracker.track_lead(
                click_id="clk_1", event_name="Sign up", customer_external_id="u1"
            )
            provider.disable_link("clk_1")
            with pytest.raises(DeliveryError) as caught:
                await tracker.track_sale(customer_external_id="u1", amount=100)
    assert signup.outcome == "recorded" and provider.sales() == []
    assert caught.value.code == "link_disabled" and "sale not tracked" in caught.value.message


# -- a sale whose lead does not show yet is retried (Dub), final on PIMMS ----------------------


async def test_a_dub_sale_before_its_lead_shows_is_retried_until_it_does() -> None:
    provider = FakeProvider("dub", api_key=KEY)
    tally = Tally()
    async with background(provider, tally) as transport:
        first = await transport.send(lead("u1"))
        await transport.flush(timeout=30)
        sale = SaleEvent(customer_external_id="u1", amount=4900, lead_event_name="Trial")
        await transport.send(Delivery(sale, DUB))
        await until(
            lambda: any(r.path == "/track/sale" and r.status == 404 for r in provider.requests),
            "the sale was never answered 404",
        )
        await transport.send(lead("u1", name="Trial"))  # the lead shows now
        await transport.flush(timeout=30)
    assert first.status == "queued" and tally.errors == {} and tally.dropped == []
    assert [s["invoiceId"] for s in provider.sales()] == [sale.event_id]
    assert transport.stats.retried >= 1


async def test_a_pimms_sale_without_its_lead_is_final() -> None:
    provider = FakeProvider("pimms", api_key=KEY)
    with serve_in_thread(provider) as url:
        transport = HTTPTransport(KEY, base_url=url, retry=FAST)
        await transport.send(Delivery(lead("u1").event, PIMMS))
        sale = SaleEvent(customer_external_id="u1", amount=100, lead_event_name="Trial")
        with pytest.raises(DeliveryError) as caught:
            await transport.send(Delivery(sale, PIMMS))
        await transport.aclose()
    # PIMMS claimed the invoice first: a retry could only meet the claim.
    assert (caught.value.code, caught.value.retryable) == ("lead_not_found", False)
    assert transport.stats.retried == 0


# -- a route only some events take: 403 holds that route's events, not the others -------------


async def test_a_route_that_refuses_the_key_holds_only_its_events() -> None:
    provider = FakeProvider("dub", api_key=KEY, forbidden_routes={"commissions"})
    tally = Tally()
    short = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=0.1, max_elapsed=2)
    async with background(provider, tally, retry=short) as transport:
        refund = await transport.send(Delivery(RefundEvent(invoice_id="in_1"), DUB))
        sent = [(await transport.send(lead(f"u{i}"))).event_id for i in range(10)]
        await transport.flush(timeout=30)
    assert len(provider.leads()) == len(sent) == 10 and tally.kinds("paused") == 0
    error = tally.errors[refund.event_id]  # held by its retries, then reported
    assert isinstance(error, DeliveryError) and error.code == "forbidden"
    lookups = sum(r.path == "/commissions" for r in provider.requests)
    assert lookups >= 2 and "gave up" in str(error)


# -- what cannot be about one event still pauses, and resumes ---------------------------------


class Rerouted:
    """A proxy in front of the fake: while ``on``, requests go to a path with no route (the
    fake answers its HTML 404 page); ``poison`` sends only bodies naming it there."""

    def __init__(self, inner: Any, poison: bytes | None = None) -> None:
        self.inner = inner
        self.poison = poison
        self.on = poison is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_fake/"):
            await self.inner(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        wrong = self.on if self.poison is None else self.poison in body
        if wrong:
            scope = {**scope, "path": "/v0" + scope["path"], "raw_path": None}
        replayed = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Any:
            return replayed.pop() if replayed else await receive()

        await self.inner(scope, replay, send)


async def test_a_route_level_html_404_pauses_then_resumes_and_delivers_all(caplog: Any) -> None:
    provider = FakeProvider("dub", api_key=KEY)
    proxy = Rerouted(provider)
    tally = Tally()
    async with background(proxy, tally, pause_interval=0.2) as transport:
        sent = [(await transport.send(lead(f"u{i}"))).event_id for i in range(20)]
        await until(lambda: transport.paused, "an HTML 404 never paused delivery")
        proxy.on = False  # base_url fixed
        await transport.flush(timeout=30)
    row = tally.row(sent, provider)
    assert row == {"sent": 20, "delivered": 20, "dup": 0, "reported": 0, "lost": 0}
    assert tally.kinds("paused") == 1 and tally.kinds("resumed") == 1
    assert any("wrong_path" in r.getMessage() for r in caplog.records)


async def trickle_until_struck(transport: Any, poison: str, tally: Tally) -> list[str]:
    """Signups every 20 ms behind the ``poison`` event until it is failed (and 30 are sent);
    alone, it would be held as any fault of the whole integration is: nothing tells the two
    apart. Returns the event ids sent, the poison's first."""
    sent = [poison]
    deadline = time.monotonic() + 60
    while poison not in tally.errors or len(sent) < 30:
        assert time.monotonic() < deadline, "the poison event was held forever"
        sent.append((await transport.send(lead(f"u{len(sent)}"))).event_id)
        await asyncio.sleep(0.02)
    return sent


async def test_a_poison_event_is_failed_after_its_strikes_in_the_queue(caplog: Any) -> None:
    provider = FakeProvider("dub", api_key=KEY)
    tally = Tally()
    proxy = Rerouted(provider, poison=b'"u_poison"')
    async with background(proxy, tally, pause_interval=0.1) as transport:
        poison = await transport.send(lead("u_poison"))
        sent = await trickle_until_struck(transport, poison.event_id, tally)
        await transport.flush(timeout=60)
    row = tally.row(sent, provider)
    assert row == {
        "sent": len(sent),
        "delivered": len(sent) - 1,
        "dup": 0,
        "reported": 1,
        "lost": 0,
    }
    error = tally.errors[poison.event_id]
    assert isinstance(error, DeliveryError) and not error.retryable
    assert error.code == "wrong_path" and f"met {STRIKES} times" in str(error)
    attempts = sum(
        r.kind == "attempt" and r.event_id == poison.event_id and r.status_code == 404
        for r in tally.records
    )
    assert STRIKES <= attempts <= 2 * STRIKES  # bounded: a few probes, never forever
    assert logged(caplog, poison.event_id) and tally.kinds("resumed") >= STRIKES - 1


async def test_a_poison_event_becomes_a_dead_letter_in_the_outbox(tmp_path: Path) -> None:
    provider = FakeProvider("dub", api_key=KEY)
    proxy = Rerouted(provider, poison=b'"u_poison"')
    tally = Tally()
    with serve_in_thread(proxy) as url:
        store = SQLiteOutbox(tmp_path / "events.db")
        transport = OutboxTransport(
            store,
            HTTPTransport(KEY, base_url=url, retry=FAST),
            poll_interval=0.02,
            pause_interval=0.1,
            on_error=tally.on_error,
        )
        await transport.start()
        poison = await transport.send(lead("u_poison"))
        sent = await trickle_until_struck(transport, poison.event_id, tally)
        deadline = time.monotonic() + 60
        while await store.unfinished():
            assert time.monotonic() < deadline, "the outbox never finished its rows"
            await asyncio.sleep(0.05)
        dead = await store.list("dead")
        await transport.aclose()
    delivered = {lead["customerExternalId"] for lead in provider.leads()}
    lost = len(sent) - len(delivered) - len(dead)
    assert (len(delivered), len(dead), lost) == (len(sent) - 1, 1, 0)
    assert dead[0].event_id == poison.event_id and dead[0].error_code == "wrong_path"
    assert poison.event_id in tally.errors  # reported by id


async def test_a_dub_sale_right_after_an_async_lead_is_retried_until_dub_shows_it() -> None:
    provider = FakeProvider("dub", api_key=KEY, lead_delay=1.0)
    tally = Tally()
    async with background(provider, tally) as transport:
        async_lead = lead("u1").event.model_copy(update={"mode": "async"})  # as Dub's default
        await transport.send(Delivery(async_lead, DUB))
        await transport.flush(timeout=30)  # answered: the customer exists, its lead not yet
        sale = SaleEvent(customer_external_id="u1", amount=4900)
        await transport.send(Delivery(sale, DUB))
        await transport.flush(timeout=30)
    refused = [r for r in tally.records if r.kind == "attempt" and r.status_code == 404]
    assert tally.errors == {} and tally.dropped == [] and len(refused) >= 1
    assert [s["invoiceId"] for s in provider.sales()] == [sale.event_id]
