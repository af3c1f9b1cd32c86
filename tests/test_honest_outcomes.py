"""Honest outcomes (issue 27, item 3): what each result says is what the provider's own code
did. Real sockets to the fake provider, which answers as Dub's and PIMMS' route handlers do.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from asgi_attribution import (
    DUB,
    PIMMS,
    Delivery,
    HTTPTransport,
    InvalidEventError,
    RetryPolicy,
    SaleEvent,
    Tracker,
)
from asgi_attribution.testing import FakeProvider, serve_in_thread
from tests.support.asgi import KEY

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=0.1, max_elapsed=30)


class LosesFirstAnswer:
    """A proxy that passes the first tracking request on and loses its answer (502)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lost = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.lost:
            await self.inner(scope, receive, send)
            return
        self.lost += 1

        async def swallow(message: Any) -> None:
            pass  # the provider acted; its answer never comes back

        await self.inner(scope, receive, swallow)
        headers = [(b"content-type", b"text/html")]
        await send({"type": "http.response.start", "status": 502, "headers": headers})
        await send({"type": "http.response.body", "body": b"<html>Bad Gateway</html>"})


async def signed_up(url: str, provider_name: str) -> None:
    async with Tracker(provider_name, api_key=KEY, base_url=url, background=False) as tracker:
        await tracker.track_lead(click_id="clk_1", event_name="Sign up", customer_external_id="u1")


@pytest.mark.parametrize(
    ("name", "outcome", "reason"),
    [("pimms", "unknown", "maybe_recorded_earlier"), ("dub", "recorded", None)],
)
async def test_a_retried_sale_whose_first_answer_was_lost(
    name: str, outcome: str, reason: str | None
) -> None:
    provider = FakeProvider(name, api_key=KEY)  # type: ignore[arg-type]
    proxy = LosesFirstAnswer(provider)
    with serve_in_thread(provider) as direct, serve_in_thread(proxy) as url:
        await signed_up(direct, name)
        transport = HTTPTransport(KEY, base_url=url, retry=FAST)
        sale = SaleEvent(customer_external_id="u1", amount=4900, invoice_id="in_1")
        result = await transport.send(Delivery(sale, PIMMS if name == "pimms" else DUB))
        await transport.aclose()
    # Recorded by the attempt whose answer was lost; the retry met the invoice again.
    assert proxy.lost == 1 and len(provider.sales()) == 1
    assert (result.status, result.outcome, result.outcome_reason) == ("sent", outcome, reason)
    assert transport.stats.retried == 1


async def test_a_pimms_sale_of_an_unknown_customer_is_still_not_recorded() -> None:
    provider = FakeProvider("pimms", api_key=KEY)
    with serve_in_thread(provider) as pimms_url:
        transport = HTTPTransport(KEY, base_url=pimms_url, retry=FAST)
        sale = SaleEvent(customer_external_id="nobody", amount=100)
        result = await transport.send(Delivery(sale, PIMMS))
        await transport.aclose()
    assert (result.outcome, result.outcome_reason) == (
        "not_recorded",
        "no_customer_or_duplicate_invoice",
    )


async def test_a_dub_direct_sale_of_amount_0_with_a_click_is_sent() -> None:
    provider = FakeProvider("dub", api_key=KEY)
    with serve_in_thread(provider) as url:
        async with Tracker("dub", api_key=KEY, base_url=url, background=False) as tracker:
            direct = await tracker.track_sale(
                customer_external_id="u_direct", amount=0, click_id="clk_1"
            )
            bare = await tracker.track_sale(customer_external_id="u_bare", amount=0)
    # Sent: Dub makes the customer and its lead from the click before the amount check.
    assert (direct.status, direct.outcome, direct.outcome_reason) == (
        "sent",
        "not_recorded",
        "amount_zero",
    )
    assert [c["externalId"] for c in provider.customers()] == ["u_direct"]
    # Without a click there is nothing Dub would do: not sent.
    assert (bare.status, bare.outcome_reason) == ("skipped", "amount_zero")
    assert [r.body["customerExternalId"] for r in provider.requests if r.body] == ["u_direct"]


async def test_country_is_not_sent_to_dub_and_a_warning_says_why_once(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="asgi_attribution")
    dub = dataclasses.replace(DUB)  # a fresh provider: its warning not given yet
    provider = FakeProvider("dub", api_key=KEY)
    with serve_in_thread(provider) as url:
        async with Tracker(dub, api_key=KEY, base_url=url, background=False) as tracker:
            await tracker.track_lead(
                click_id="clk_1", event_name="Sign up", customer_external_id="u1"
            )
            first = await tracker.track_customer(
                customer_id="u1", customer_name="Ada", country="FR"
            )
            second = await tracker.track_customer(customer_id="u1", country="DE")
    patches = [r.body for r in provider.requests if r.method == "PATCH"]
    assert patches == [{"name": "Ada"}, {}]
    assert first.status == second.status == "sent"
    warnings = [r.getMessage() for r in caplog.records if "country" in r.getMessage()]
    assert len(warnings) == 1 and "does not store" in warnings[0]


async def test_country_is_refused_for_pimms_whose_route_has_no_such_field() -> None:
    async with Tracker("pimms", api_key=KEY, background=False) as tracker:
        with pytest.raises(InvalidEventError) as caught:
            await tracker.track_customer(customer_id="u1", country="FR")
    assert caught.value.errors == [("country", "pimms does not take it")]
