"""What a 2xx says the provider did: outcomes on results, counters, on_delivered, observers.

Real sockets to the fake provider (which answers 200 with nulls for what it did not record),
and a wrapper answering 200 with HTML, as a captive proxy does.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from asgi_attribution import (
    DUB,
    BackgroundTransport,
    Delivery,
    DeliveryError,
    HTTPTransport,
    LeadEvent,
    SaleEvent,
    TrackResult,
)
from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.transports import DeliveryRecord
from tests.support.asgi import KEY

pytestmark = pytest.mark.anyio


def lead(user: str, name: str = "Sign up") -> Delivery:
    return Delivery(LeadEvent(click_id="clk1", event_name=name, customer_external_id=user), DUB)


async def test_inline_results_carry_the_outcome(provider: FakeProvider, url: str) -> None:
    transport = HTTPTransport(KEY, base_url=url)
    first = await transport.send(lead("u1"))
    again = await transport.send(lead("u1", "sign-up"))  # Dub's key: one event
    sale = await transport.send(Delivery(SaleEvent(customer_external_id="nobody", amount=500), DUB))
    await transport.aclose()
    assert (first.outcome, first.outcome_reason) == ("recorded", None)
    assert (again.outcome, again.outcome_reason) == ("duplicate", "duplicate_lead")
    assert (sale.outcome, sale.outcome_reason) == ("not_recorded", "no_customer")
    assert first.warnings == ()


async def test_background_counts_outcomes_and_calls_on_delivered(
    provider: FakeProvider, url: str, caplog: Any
) -> None:
    delivered: list[tuple[str, TrackResult]] = []
    records: list[DeliveryRecord] = []

    async def on_delivered(delivery: Delivery, result: TrackResult) -> None:
        delivered.append((delivery.event.event_id, result))

    def broken(delivery: Delivery, result: TrackResult) -> None:
        raise RuntimeError("a bug in the user's callback")

    transport = BackgroundTransport(HTTPTransport(KEY, base_url=url), on_delivered=on_delivered)
    transport.stats.subscribe(records.append)
    await transport.start()
    await transport.send(lead("u1"))
    await transport.flush(timeout=10)
    await transport.send(lead("u1"))
    no_sale = Delivery(SaleEvent(customer_external_id="nobody", amount=500), DUB)
    await transport.send(no_sale)
    await transport.flush(timeout=10)
    transport.on_delivered = broken
    await transport.send(lead("u2"))
    await transport.aclose()
    outcomes = sorted(str(result.outcome) for _, result in delivered)
    assert outcomes == ["duplicate", "not_recorded", "recorded"]
    stats = transport.stats
    assert (stats.sent, stats.duplicates, stats.not_recorded) == (4, 1, 1)
    assert stats.as_dict()["duplicates"] == 1 and stats.as_dict()["not_recorded"] == 1
    assert f"sale {no_sale.event.event_id} not recorded by dub: no_customer" in caplog.text
    assert "delivery callback" in caplog.text  # the broken callback is logged, not raised
    attempts = [r for r in records if r.kind == "attempt"]
    assert len(attempts) == 4 and all(r.status_code == 200 for r in attempts)
    assert all(r.duration is not None and r.duration >= 0 for r in attempts)
    assert {(r.provider, r.event_kind) for r in attempts} == {("dub", "lead"), ("dub", "sale")}
    kinds = [r.kind for r in records]
    assert kinds.count("queued") == 4 and kinds.count("sent") == 4
    assert kinds.count("duplicate") == 1 and kinds.count("not_recorded") == 1


async def html_ok(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/html")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"<html>Welcome to the hotel wifi</html>"})


async def test_a_2xx_that_is_not_json_is_unknown_with_a_warning(caplog: Any) -> None:
    records: list[DeliveryRecord] = []
    with serve_in_thread(html_ok) as url:
        transport = HTTPTransport(KEY, base_url=url)
        transport.stats.subscribe(records.append)
        delivery = lead("u1")
        result = await transport.send(delivery)
        await transport.aclose()
    assert (result.status, result.outcome, result.outcome_reason) == ("sent", "unknown", "not_json")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert delivery.event.event_id in warning.getMessage() and "not JSON" in warning.getMessage()
    # The attempt, then the end of the event, counted by send: it finished it.
    attempt, sent = records
    assert (attempt.kind, attempt.status_code, attempt.event_id) == (
        "attempt",
        200,
        delivery.event.event_id,
    )
    assert (sent.kind, sent.event_id, transport.stats.sent) == ("sent", delivery.event.event_id, 1)


async def test_a_network_error_is_an_attempt_without_a_status_code() -> None:
    from asgi_attribution import RetryPolicy

    records: list[DeliveryRecord] = []
    transport = HTTPTransport(KEY, base_url="http://127.0.0.1:9", retry=RetryPolicy(max_attempts=1))
    transport.stats.subscribe(records.append)
    with pytest.raises(DeliveryError):
        await transport.send(lead("u1"))
    await transport.aclose()
    assert [(r.kind, r.status_code) for r in records] == [("attempt", None), ("failed", None)]
