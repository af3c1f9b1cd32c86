"""What the providers really do, from our side: limits counted as JavaScript counts them,
visitor-typed fields that never fail a signup, outcomes of 200s that recorded nothing, and the
cookies and placeholders of the providers' scripts. Real ASGI calls and a real socket to the
fake provider.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_attribution import (
    AttributionMiddleware,
    InvalidEventError,
    MemoryTransport,
    Tracker,
    clear_attribution,
    get_attribution,
    track_lead,
)
from asgi_attribution.testing import FakeProvider

from .support.asgi import KEY, client_for

pytestmark = pytest.mark.anyio


def signup_app(tracker: Tracker) -> Any:
    async def signup(request: Request) -> Response:
        form = await request.json()
        result = await track_lead(request, "Sign up", **form)
        response = JSONResponse(
            {
                "status": result.status,
                "outcome": result.outcome,
                "reason": result.outcome_reason,
                "warnings": list(result.warnings),
            }
        )
        clear_attribution(request, response, result)
        return response

    async def whoami(request: Request) -> Response:
        return JSONResponse({"click_id": get_attribution(request).click_id})

    app = Starlette(routes=[Route("/signup", signup, methods=["POST"]), Route("/", whoami)])
    return AttributionMiddleware(app, tracker)


def inline(url: str, provider: str = "dub") -> Tracker:
    return Tracker(provider, api_key=KEY, base_url=url, background=False)


async def test_metadata_is_measured_as_javascript_does() -> None:
    tracker = Tracker("dub", transport=MemoryTransport())
    accepted = await tracker.track_lead(
        click_id="c1", event_name="Sign up", customer_external_id="u1", metadata={"k": "é" * 4000}
    )
    assert accepted.status == "sent"
    with pytest.raises(InvalidEventError) as caught:
        tracker.track_lead(
            click_id="c1",
            event_name="Sign up",
            customer_external_id="u1",
            metadata={"k": "é" * 10001},
        )
    assert str(caught.value) == (
        "invalid lead event: metadata: must be at most 10,000 characters as JSON (got 10,009)"
    )


async def test_an_idn_email_signup_succeeds_and_the_lead_goes_without_it(
    provider: FakeProvider, url: str
) -> None:
    async with client_for(signup_app(inline(url))) as client:
        response = await client.post(
            "/signup",
            json={"customer_external_id": "u1", "customer_email": "jurgen@bücher.de"},
            headers={"cookie": "dub_id=clk1"},
        )
    assert response.status_code == 200
    assert response.json()["status"] == "sent"
    assert response.json()["warnings"] == [
        "customer_email: must be an email address of at most 100 characters"
    ]
    (lead,) = provider.leads()
    assert lead["clickId"] == "clk1" and "customerEmail" not in lead


async def test_a_required_field_still_raises() -> None:
    tracker = Tracker("dub", transport=MemoryTransport())
    with pytest.raises(InvalidEventError, match="event_name"):
        tracker.track_lead(click_id="c1", event_name="  ", customer_external_id="u1")


async def test_a_duplicate_lead_is_named_and_the_click_is_kept(
    provider: FakeProvider, url: str
) -> None:
    async with client_for(signup_app(inline(url))) as client:
        first = await client.post(
            "/signup", json={"customer_external_id": "u1"}, headers={"cookie": "dub_id=clk1"}
        )
        # "sign-up" and "Sign up" are one event to Dub: this one records nothing.
        again = await client.post(
            "/signup", json={"customer_external_id": "u1"}, headers={"cookie": "dub_id=clk1"}
        )
    assert (first.json()["outcome"], again.json()["outcome"]) == ("recorded", "duplicate")
    assert again.json()["reason"] == "duplicate_lead"
    assert "set-cookie" in first.headers  # recorded: the click is forgotten
    assert "set-cookie" not in again.headers  # recorded nothing: the click is kept
    assert len(provider.leads()) == 1


async def test_a_zero_sale_is_not_sent(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = await inline(url).track_sale(customer_external_id="u1", amount=0)
    assert (result.status, result.outcome, result.outcome_reason) == (
        "skipped",
        "not_recorded",
        "amount_zero",
    )
    assert provider.requests == []
    assert f"sale {result.event_id} not recorded by dub: amount_zero" in caplog.text


async def test_a_sale_of_an_unknown_customer_is_not_recorded(
    provider: FakeProvider, url: str
) -> None:
    result = await inline(url).track_sale(customer_external_id="nobody", amount=100)
    assert (result.status, result.outcome, result.outcome_reason) == (
        "sent",
        "not_recorded",
        "no_customer",
    )


async def test_the_first_of_duplicate_cookies_wins() -> None:
    app = signup_app(Tracker("dub", transport=MemoryTransport()))
    async with client_for(app) as client:
        response = await client.get("/", headers={"cookie": "dub_id=first; dub_id=second"})
    assert response.json() == {"click_id": "first"}


async def test_the_pimms_link_placeholder_never_replaces_a_real_click() -> None:
    app = signup_app(Tracker("pimms", transport=MemoryTransport()))
    async with client_for(app) as client:
        landing = await client.get("/?pimms_id=1", headers={"cookie": "pimms_id=real_click"})
        placeholder_cookie = await client.get("/", headers={"cookie": "pimms_id=1"})
    assert landing.json() == {"click_id": "real_click"}
    assert "set-cookie" not in landing.headers
    assert placeholder_cookie.json() == {"click_id": None}


async def test_pimms_refuses_an_empty_click_id_locally() -> None:
    tracker = Tracker("pimms", transport=MemoryTransport())
    with pytest.raises(InvalidEventError, match="click_id"):
        tracker.track_lead(click_id="", event_name="Sign up", customer_external_id="u1")


async def test_pimms_sales_carry_only_what_pimms_reads() -> None:
    memory = MemoryTransport()
    tracker = Tracker("pimms", transport=memory)
    await tracker.track_sale(
        customer_external_id="u1",
        amount=100,
        click_id="c1",
        customer_name="Ada",
        payment_processor="apple",
    )
    body = memory.requests[0].json
    assert "clickId" not in body and "customerName" not in body
    assert body["paymentProcessor"] == "custom" and body["externalId"] == "u1"
    with pytest.raises(InvalidEventError, match="payment_processor"):
        Tracker("dub", transport=memory).track_sale(
            customer_external_id="u1", amount=100, payment_processor="paypal"
        )


async def test_ids_and_names_are_trimmed_as_the_providers_trim_them() -> None:
    memory = MemoryTransport()
    await Tracker("dub", transport=memory).track_customer(customer_id=" u1 ", customer_name="A")
    assert memory.requests[0].path == "/customers/ext_u1"
    # An avatar must be a URL; like every visitor-typed field, a bad one is dropped, not fatal.
    result = await Tracker("dub", transport=memory).track_customer(
        customer_id="u1", customer_name="A", customer_avatar="me.png"
    )
    assert result.warnings == ("customer_avatar: must be an http:// or https:// URL",)
    assert memory.requests[1].json == {"name": "A"}
