"""Refunds reach the partner's commission: ``Tracker.refund_sale`` against the fake Dub API over
a real socket (lookup ``GET /commissions?invoiceId=``, then ``PATCH /commissions/{id}``), in full
and in part, while the commission is still being created, for a sale without one, through a
SQLite outbox across a restart; PIMMS refuses refunds before anything is sent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import (
    DeliveryError,
    HTTPTransport,
    InvalidEventError,
    RetryPolicy,
    Tracker,
    TrackResult,
)
from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.transports import SQLiteOutbox
from tests.support.asgi import KEY
from tests.test_security import exception_texts

pytestmark = pytest.mark.anyio

# Short waits: the commission_pending retry_after (2 s) is clamped to max_retry_after.
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=0.1, max_elapsed=30)
CANARY = "dub_canary_0123456789abcdef"  # not a local: the test's own frame is in the traceback


async def sell(tracker: Tracker, invoice_id: str, amount: int = 5000) -> None:
    lead = await tracker.track_lead(
        click_id="clk1", event_name="Sign up", customer_external_id="u1"
    )
    sale = await tracker.track_sale(customer_external_id="u1", amount=amount, invoice_id=invoice_id)
    assert (lead.status, sale.status, sale.outcome) == ("sent", "sent", "recorded")


def inline(url: str, **options: Any) -> Tracker:
    return Tracker("dub", api_key=KEY, base_url=url, background=False, retry=FAST, **options)


def patches(provider: FakeProvider) -> list[Any]:
    return [r.body for r in provider.requests if r.method == "PATCH"]


def lookups(provider: FakeProvider) -> int:
    return sum(r.method == "GET" and r.path == "/commissions" for r in provider.requests)


async def test_a_full_refund_marks_the_commission_refunded_once(
    provider: FakeProvider, url: str
) -> None:
    async with inline(url) as tracker:
        await sell(tracker, "in_full")
        result = await tracker.refund_sale(invoice_id="in_full")
        again = await tracker.refund_sale(invoice_id="in_full")
    assert (result.status, result.outcome, result.event.kind) == ("sent", "recorded", "refund")
    [commission] = provider.commissions(invoiceId="in_full")
    assert commission["status"] == "refunded" and commission["amount"] == 5000
    # status, not amount 0: Dub ignores a falsy amount, and the status takes it off the payout.
    assert patches(provider) == [{"status": "refunded"}]
    assert (again.outcome, again.outcome_reason) == ("duplicate", "already_refunded")
    assert tracker.stats.duplicates == 1


async def test_partial_refunds_lower_the_amount_and_add_up(
    provider: FakeProvider, url: str
) -> None:
    async with inline(url) as tracker:
        await sell(tracker, "in_part")
        first = await tracker.refund_sale(invoice_id="in_part", amount=1000)
        [commission] = provider.commissions(invoiceId="in_part")
        assert (commission["amount"], commission["earnings"]) == (4000, 400)
        second = await tracker.refund_sale(invoice_id="in_part", amount=500, currency="USD")
        [commission] = provider.commissions(invoiceId="in_part")
        assert (commission["amount"], commission["status"]) == (3500, "pending")
        rest = await tracker.refund_sale(invoice_id="in_part", amount=3500)
    assert [r.outcome for r in (first, second, rest)] == ["recorded"] * 3
    assert patches(provider) == [
        {"modifySaleAmount": -1000},
        {"modifySaleAmount": -500, "currency": "usd"},
        {"status": "refunded"},  # what is left, refunded whole
    ]
    assert provider.commissions(invoiceId="in_part")[0]["status"] == "refunded"


async def test_the_lookup_is_retried_until_a_late_commission_appears(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="asgi_attribution")
    late = FakeProvider("dub", api_key=KEY, commission_delay=0.5)
    with serve_in_thread(late) as url:
        async with inline(url) as tracker:
            await sell(tracker, "in_late")
            result = await tracker.refund_sale(invoice_id="in_late")
    assert (result.outcome, late.commissions(invoiceId="in_late")[0]["status"]) == (
        "recorded",
        "refunded",
    )
    assert lookups(late) >= 2 and tracker.stats.retried >= 1
    assert "commission_pending" in caplog.text


async def test_a_sale_without_commission_finishes_as_no_commission(
    provider: FakeProvider, url: str
) -> None:
    quick = HTTPTransport(KEY, base_url=url, retry=FAST, refund_window=0.3)
    async with Tracker("dub", transport=quick) as tracker:
        result = await tracker.refund_sale(invoice_id="in_organic", amount=100)
    assert (result.status, result.outcome, result.outcome_reason) == (
        "sent",
        "not_recorded",
        "no_commission",
    )
    assert lookups(provider) >= 2 and patches(provider) == []  # looked for the window
    assert tracker.stats.not_recorded == 1 and tracker.stats.failed == 0


async def test_no_commission_comes_before_the_retry_step_gives_up(
    provider: FakeProvider, url: str
) -> None:
    three = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    async with Tracker("dub", transport=HTTPTransport(KEY, base_url=url, retry=three)) as tracker:
        result = await tracker.refund_sale(invoice_id="in_none")
    # The window is 10 minutes, but the policy allows 3 attempts: the third one decides.
    assert (result.outcome_reason, lookups(provider)) == ("no_commission", 3)


async def test_an_outbox_refund_survives_a_restart(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    async with inline(url) as seller:
        await sell(seller, "in_outbox")
    async with Tracker("dub", api_key=KEY, base_url=url, outbox=path, deliver=False) as app:
        queued = await app.refund_sale(invoice_id="in_outbox", amount=2000, currency="usd")
    assert (queued.status, queued.durable) == ("queued", True)
    assert patches(provider) == [] and lookups(provider) == 0  # stored, not sent

    delivered: list[TrackResult] = []
    worker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        outbox=path,
        retry=FAST,
        on_delivered=lambda _, result: delivered.append(result),
    )
    async with worker:
        await worker.flush(timeout=10)
    assert [(r.event_id, r.outcome) for r in delivered] == [(queued.event_id, "recorded")]
    assert provider.commissions(invoiceId="in_outbox")[0]["amount"] == 3000
    assert patches(provider) == [{"modifySaleAmount": -2000, "currency": "usd"}]
    async with SQLiteOutbox(path, create=False) as store:
        [row] = await store.list("delivered")
    assert (row.kind, row.event["invoice_id"], row.outcome) == ("refund", "in_outbox", "recorded")


async def test_pimms_refuses_refunds_before_sending() -> None:
    pimms = FakeProvider("pimms", api_key=KEY)
    with serve_in_thread(pimms) as url:
        async with Tracker("pimms", api_key=KEY, base_url=url, background=False) as tracker:
            with pytest.raises(InvalidEventError, match="refund_sale: pimms has no commissions"):
                await tracker.refund_sale(invoice_id="in_1")
    assert pimms.requests == []


async def test_a_refund_is_validated_at_the_call(url: str) -> None:
    tracker = inline(url)
    with pytest.raises(InvalidEventError, match="currency: only with amount"):
        tracker.refund_sale(invoice_id="in_1", currency="usd")
    with pytest.raises(InvalidEventError, match="invoice_id") as info:
        tracker.refund_sale(invoice_id="", amount=0)
    assert info.value.fields == ["invoice_id", "amount"]


async def test_the_api_key_stays_out_of_a_failed_refund(url: str) -> None:
    tracker = Tracker("dub", api_key=CANARY, base_url=url, background=False, retry=FAST)
    async with tracker:
        with pytest.raises(DeliveryError) as info:
            await tracker.refund_sale(invoice_id="in_1")
    assert info.value.status_code == 401
    texts = exception_texts(info.value)
    assert [t for t in texts if CANARY in t or CANARY[4:20] in t] == []


async def test_a_refund_goes_through_a_given_httpx_client_too(
    provider: FakeProvider, url: str
) -> None:
    import httpx

    async with httpx.AsyncClient() as client, inline(url) as seller:
        await sell(seller, "in_httpx")
        transport = HTTPTransport(KEY, base_url=url, retry=FAST, client=client)
        async with Tracker("dub", transport=transport) as tracker:
            result = await tracker.refund_sale(invoice_id="in_httpx", amount=100)
    assert result.outcome == "recorded" and patches(provider) == [{"modifySaleAmount": -100}]
    [lookup] = [r for r in provider.requests if r.method == "GET"]
    assert lookup.body is None  # a GET without a body


async def test_a_commission_in_a_locked_payout_is_not_recorded_as_payout_locked(
    provider: FakeProvider, url: str
) -> None:
    async with inline(url) as tracker:
        await sell(tracker, "in_locked")
        assert provider.lock_payout("in_locked", "processing") == 1
        result = await tracker.refund_sale(invoice_id="in_locked", amount=1000)
    assert (result.status, result.outcome, result.outcome_reason) == (
        "sent",
        "not_recorded",
        "payout_locked",
    )
    assert provider.commissions(invoiceId="in_locked")[0]["amount"] == 5000  # unchanged
    assert tracker.stats.not_recorded == 1 and tracker.stats.failed == 0


class RefundedMeanwhile:
    """A proxy that refunds the commission itself just before the package's PATCH reaches the
    fake: another process refunded the same invoice between the lookup and the update."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "PATCH":
            body = b'{"status": "refunded"}'
            headers = [(b"authorization", f"Bearer {KEY}".encode())]
            other = {**scope, "headers": headers}
            replay = [{"type": "http.request", "body": body, "more_body": False}]

            async def first(message: Any) -> None:
                pass

            async def receive_other() -> Any:
                return replay.pop()

            await self.inner(other, receive_other, first)
        await self.inner(scope, receive, send)


async def test_a_commission_refunded_meanwhile_is_a_duplicate(provider: FakeProvider) -> None:
    with serve_in_thread(RefundedMeanwhile(provider)) as url:
        async with inline(url) as tracker:
            await sell(tracker, "in_twice")
            result = await tracker.refund_sale(invoice_id="in_twice")
    statuses = [r.status for r in provider.requests if r.method == "PATCH"]
    assert statuses == [200, 400]  # the other refund, then ours: "already in the refunded status"
    assert (result.status, result.outcome, result.outcome_reason) == (
        "sent",
        "duplicate",
        "already_refunded",
    )
    assert tracker.stats.failed == 0


async def test_a_refund_in_a_workspace_without_program_fails_as_no_program() -> None:
    provider = FakeProvider("dub", api_key=KEY, program=False)
    with serve_in_thread(provider) as url, pytest.raises(DeliveryError) as caught:
        async with inline(url) as tracker:
            await tracker.refund_sale(invoice_id="in_1")
    assert (caught.value.code, caught.value.retryable) == ("no_program", False)
    assert not getattr(caught.value, "integration", False)
