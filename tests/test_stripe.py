"""The Stripe helpers' parameters through the real ``stripe`` package to a local HTTP stub.

The stub records the form body Stripe's API would receive, so these tests check what Dub's
Stripe app would read (``metadata[dubCustomerExternalId]``, ``client_reference_id``...).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from asgi_attribution import AttributionMiddleware, MemoryTransport, Tracker
from asgi_attribution.stripe import (
    checkout_session_params,
    client_reference_id,
    customer_metadata,
    payment_link_url,
)
from asgi_attribution.testing import serve_in_thread

stripe = pytest.importorskip("stripe")
pytestmark = pytest.mark.anyio


class StripeStub:
    """A few routes of Stripe's API: records each form body, answers a minimal object."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        with self.lock:
            self.received.append((scope["method"], scope["path"], form))
        if scope["path"].startswith("/v1/checkout/sessions"):
            answer: dict[str, Any] = {"id": "cs_test_1", "object": "checkout.session"}
        else:
            answer = {"id": "cus_test_1", "object": "customer"}
        content = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"request-id", b"req_1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


@pytest.fixture
def stub() -> Iterator[tuple[StripeStub, str]]:
    app = StripeStub()
    with serve_in_thread(app) as url:
        yield app, url


def shop(stripe_base: str, provider: str = "dub") -> AttributionMiddleware:
    """An app calling Stripe the way the docs tell users to (sync routes: a worker thread)."""
    client = stripe.StripeClient("sk_test_123", base_addresses={"api": stripe_base})

    def checkout(request: Request) -> JSONResponse:
        q = request.query_params
        params = checkout_session_params(
            request,
            customer_external_id=q.get("user"),
            lead_tracked=q.get("lead") == "1",
            mode=q.get("mode", "subscription"),  # type: ignore[arg-type]
            client_reference_id=q.get("ref"),
        )
        session = client.v1.checkout.sessions.create(
            params={
                "line_items": [{"price": "price_123", "quantity": 1}],
                "success_url": "https://acme.com/thanks",
                **params,
                "metadata": {"plan": "pro", **params.get("metadata", {})},
            }
        )
        return JSONResponse({"id": session.id})

    def customer(request: Request) -> JSONResponse:
        created = client.v1.customers.create(
            params={"email": "ada@example.com", **customer_metadata(request, "user_42")}
        )
        return JSONResponse({"id": created.id})

    def link(request: Request) -> JSONResponse:
        url = payment_link_url("https://buy.stripe.com/test_abc?prefilled_email=a%40b.co", request)
        return JSONResponse({"url": url, "ref": client_reference_id(request)})

    app = Starlette(
        routes=[Route("/checkout", checkout), Route("/customer", customer), Route("/link", link)]
    )
    return AttributionMiddleware(app, Tracker(provider, transport=MemoryTransport()))


async def get(app: AttributionMiddleware, path: str, cookies: dict[str, str] | None = None) -> Any:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://acme.test", cookies=cookies
    ) as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def test_tracked_lead_puts_the_customer_external_id_in_metadata(
    stub: tuple[StripeStub, str],
) -> None:
    recorder, url = stub
    await get(shop(url), "/checkout?user=user_42&lead=1", cookies={"dub_id": "clk1"})
    [(method, path, form)] = recorder.received
    assert (method, path) == ("POST", "/v1/checkout/sessions")
    assert form["metadata[dubCustomerExternalId]"] == "user_42"
    assert form["metadata[plan]"] == "pro"
    assert "client_reference_id" not in form and "customer_creation" not in form


async def test_a_tracked_lead_needs_no_click_on_this_request(stub: tuple[StripeStub, str]) -> None:
    recorder, url = stub
    await get(shop(url), "/checkout?user=user_42&lead=1")
    assert recorder.received[0][2]["metadata[dubCustomerExternalId]"] == "user_42"


async def test_without_a_lead_the_click_is_the_client_reference_id(
    stub: tuple[StripeStub, str],
) -> None:
    recorder, url = stub
    app = shop(url)
    await get(app, "/checkout?dub_id=clk1")  # a landing straight on checkout
    await get(app, "/checkout?mode=payment", cookies={"dub_id": "clk2"})
    subscription, payment = (form for _, _, form in recorder.received)
    assert subscription["client_reference_id"] == "dub_id_clk1"
    assert "customer_creation" not in subscription
    assert payment["client_reference_id"] == "dub_id_clk2"
    assert payment["customer_creation"] == "always" and payment["mode"] == "payment"


async def test_an_organic_visitor_gets_nothing(stub: tuple[StripeStub, str]) -> None:
    recorder, url = stub
    await get(shop(url), "/checkout?mode=payment")
    form = recorder.received[0][2]
    assert not any(k.startswith(("client_reference_id", "customer_creation")) for k in form)
    assert [k for k in form if k.startswith("metadata")] == ["metadata[plan]"]


async def test_the_callers_client_reference_id_is_never_overwritten(
    stub: tuple[StripeStub, str],
) -> None:
    recorder, url = stub
    await get(shop(url), "/checkout?ref=order_9&mode=payment", cookies={"dub_id": "clk1"})
    form = recorder.received[0][2]
    assert form["client_reference_id"] == "order_9"
    assert form["customer_creation"] == "always"


async def test_pimms_names(stub: tuple[StripeStub, str]) -> None:
    recorder, url = stub
    app = shop(url, provider="pimms")
    await get(app, "/checkout", cookies={"pimms_id": "clk1"})
    await get(app, "/checkout?user=user_42&lead=1", cookies={"pimms_id": "clk1"})
    await get(app, "/customer", cookies={"pimms_id": "clk1"})
    by_click, by_lead, customer = (form for _, _, form in recorder.received)
    assert by_click["client_reference_id"] == "pimms_id_clk1"
    assert by_lead["metadata[pimmsCustomerId]"] == "user_42"
    assert customer["metadata[pimmsCustomerId]"] == "user_42"
    assert customer["metadata[pimmsClickId]"] == "clk1"
    link = await get(app, "/link", cookies={"pimms_id": "clk1"})
    assert link["url"].endswith("&client_reference_id=pimms_id_clk1")


async def test_customer_metadata_names_the_click(stub: tuple[StripeStub, str]) -> None:
    recorder, url = stub
    app = shop(url)
    await get(app, "/customer", cookies={"dub_id": "clk1"})
    await get(app, "/customer")
    attributed, organic = (form for _, _, form in recorder.received)
    assert recorder.received[0][:2] == ("POST", "/v1/customers")
    assert attributed["metadata[dubClickId]"] == "clk1"
    assert attributed["metadata[dubCustomerExternalId]"] == "user_42"
    assert attributed["email"] == "ada@example.com"
    assert "metadata[dubClickId]" not in organic


async def test_global_stripe_api_with_merged_kwargs(
    stub: tuple[StripeStub, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, url = stub
    monkeypatch.setattr(stripe, "api_key", "sk_test_123")
    monkeypatch.setattr(stripe, "api_base", url)

    def checkout(request: Request) -> JSONResponse:
        params = checkout_session_params(request, mode="payment")
        session = stripe.checkout.Session.create(
            line_items=[{"price": "price_123", "quantity": 1}],
            success_url="https://acme.com/thanks",
            **params,
        )
        return JSONResponse({"id": session.id})

    app = AttributionMiddleware(
        Starlette(routes=[Route("/checkout", checkout)]),
        Tracker("dub", transport=MemoryTransport()),
    )
    assert await get(app, "/checkout", cookies={"dub_id": "clk1"}) == {"id": "cs_test_1"}
    form = recorder.received[0][2]
    assert form["client_reference_id"] == "dub_id_clk1"
    assert form["customer_creation"] == "always"


async def test_payment_links(stub: tuple[StripeStub, str]) -> None:
    _, url = stub
    app = shop(url)
    attributed = await get(app, "/link", cookies={"dub_id": "clk1"})
    organic = await get(app, "/link")
    assert attributed == {
        "url": "https://buy.stripe.com/test_abc?prefilled_email=a%40b.co"
        "&client_reference_id=dub_id_clk1",
        "ref": "dub_id_clk1",
    }
    assert organic == {
        "url": "https://buy.stripe.com/test_abc?prefilled_email=a%40b.co",
        "ref": None,
    }


def test_argument_errors() -> None:
    from starlette.requests import Request as Plain

    from asgi_attribution import DUB, Attribution

    request = Plain({"type": "http", "asgi_attribution": Attribution(DUB, click_id="c1")})
    with pytest.raises(ValueError, match="customer_external_id"):
        checkout_session_params(request, lead_tracked=True)
    with pytest.raises(ValueError, match="mode"):
        checkout_session_params(request, mode="donation")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="customer_external_id"):
        customer_metadata(request, "")
    with pytest.raises(ValueError, match="absolute"):
        payment_link_url("/pay", request)
    ref = "https://buy.stripe.com/x?client_reference_id=mine"
    assert payment_link_url(ref, request) == ref
    with pytest.raises(RuntimeError, match="AttributionMiddleware"):
        checkout_session_params(Plain({"type": "http"}))
