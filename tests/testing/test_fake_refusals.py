"""The fake refuses what Dub's route handlers refuse, with their words and their envelope:
disabled links and links of another workspace, a workspace without a program, a key without a
route's scope, locked payouts, a second refund; and a path with no route gets an HTML page.
Over a real socket (uvicorn in a thread), as a client of the provider would see it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from asgi_attribution import DUB, LeadEvent, SaleEvent
from asgi_attribution.testing import FakeProvider, serve_in_thread

AUTH = {"Authorization": "Bearer test-key"}
LEAD = {"clickId": "clk_1", "eventName": "Sign up", "customerExternalId": "u1"}
SALE = {"customerExternalId": "u1", "amount": 4900, "paymentProcessor": "stripe"}


@contextmanager
def client_of(provider: FakeProvider) -> Iterator[httpx.Client]:
    with serve_in_thread(provider) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        yield client


def refusal(response: httpx.Response) -> tuple[int, str, bool]:
    """Status, reason (as the package reads it) and message of an answer with the envelope."""
    error = response.json()["error"]
    assert set(error) == {"code", "message", "doc_url"}
    assert error["doc_url"].startswith("https://dub.co/docs/api-reference/errors#")
    path = response.url.path
    event: SaleEvent | LeadEvent = (
        SaleEvent(customer_external_id="u1", amount=1)
        if path == "/track/sale"
        else LeadEvent(click_id="c", event_name="e", customer_external_id="u1")
    )
    found = DUB.refusal(event, path, response.status_code, response.json())
    assert found is not None
    return response.status_code, found.reason, found.final


def test_a_lead_on_a_disabled_or_foreign_link_is_404_with_dubs_words() -> None:
    provider = FakeProvider("dub", disabled_clicks={"clk_off"}, foreign_clicks={"clk_x"})
    with client_of(provider) as client:
        off = client.post("/track/lead", json={**LEAD, "clickId": "clk_off"})
        foreign = client.post(
            "/track/lead", json={**LEAD, "clickId": "clk_x", "customerExternalId": "u2"}
        )
    assert refusal(off) == (404, "link_disabled", True)
    message = off.json()["error"]["message"]
    assert message.endswith("for clickId clk_off is disabled, lead not tracked")
    assert refusal(foreign) == (404, "link_not_in_workspace", True)
    assert provider.leads() == [] and provider.customers() == []


def test_a_sale_of_a_customer_whose_link_was_disabled_is_404() -> None:
    provider = FakeProvider("dub")
    with client_of(provider) as client:
        assert client.post("/track/lead", json=LEAD).status_code == 200
        provider.disable_link("clk_1")
        sale = client.post("/track/sale", json=SALE)
        direct = client.post(
            "/track/sale", json={**SALE, "customerExternalId": "u2", "clickId": "clk_1"}
        )
    assert refusal(sale) == (404, "link_disabled", True)
    message = sale.json()["error"]["message"]
    assert "for customer cus_" in message
    assert message.endswith("is disabled, sale not tracked")
    assert refusal(direct) == (404, "link_disabled", True) and provider.sales() == []


def test_a_path_with_no_route_gets_an_html_page_not_the_envelope() -> None:
    with client_of(FakeProvider("dub")) as client:
        page = client.post("/v1/track/lead", json=LEAD)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!DOCTYPE html>")


def test_commissions_without_a_program_are_404_program_not_found() -> None:
    with client_of(FakeProvider("dub", program=False)) as client:
        listed = client.get("/commissions", params={"invoiceId": "in_1"})
        patched = client.patch("/commissions/cm_1", json={"status": "refunded"})
    for answer in (listed, patched):
        assert answer.json()["error"]["message"] == "Program not found"
        assert answer.status_code == 404


def test_a_route_outside_the_keys_scopes_is_403_and_the_others_work() -> None:
    provider = FakeProvider("dub", forbidden_routes={"commissions"})
    with client_of(provider) as client:
        lead = client.post("/track/lead", json=LEAD)
        listed = client.get("/commissions")
    assert lead.status_code == 200 and listed.status_code == 403
    assert "does not have the required permissions" in listed.json()["error"]["message"]


def sold(client: httpx.Client, invoice_id: str) -> str:
    assert client.post("/track/lead", json=LEAD).status_code in (200,)
    body = {**SALE, "invoiceId": invoice_id}
    assert client.post("/track/sale", json=body).json()["sale"] is not None
    [commission] = client.get("/commissions", params={"invoiceId": invoice_id}).json()
    return str(commission["id"])


def test_refunds_change_the_sale_amount_and_locked_or_refunded_ones_are_400() -> None:
    provider = FakeProvider("dub")
    with client_of(provider) as client:
        cid = sold(client, "in_1")
        shifted = client.patch(f"/commissions/{cid}", json={"modifySaleAmount": -900})
        absolute = client.patch(f"/commissions/{cid}", json={"saleAmount": 3000})
        refunded = client.patch(f"/commissions/{cid}", json={"status": "refunded"})
        again = client.patch(f"/commissions/{cid}", json={"status": "refunded"})
        provider.lock_payout("in_1", "completed")
        locked = client.patch(f"/commissions/{cid}", json={"status": "canceled"})
    assert shifted.json()["amount"] == 4000 and absolute.json()["amount"] == 3000
    assert refunded.json()["status"] == "refunded"
    assert (again.status_code, again.json()["error"]["message"]) == (
        400,
        "This commission is already in the refunded status.",
    )
    assert (locked.status_code, locked.json()["error"]["message"]) == (
        400,
        "Cannot update commission: Its payout is already completed.",
    )


@pytest.mark.parametrize("status", ["pending", "canceled"])
def test_a_payout_still_pending_or_canceled_does_not_lock(status: str) -> None:
    provider = FakeProvider("dub")
    with client_of(provider) as client:
        cid = sold(client, "in_1")
        provider.lock_payout("in_1", status)
        answer: Any = client.patch(f"/commissions/{cid}", json={"status": "refunded"})
    assert answer.status_code == 200


# -- leads recorded in the background (lead_delay) ------------------------------------------


def test_a_dub_async_lead_shows_to_sales_only_after_the_delay_a_wait_lead_at_once() -> None:
    provider = FakeProvider("dub", lead_delay=3600.0)
    with client_of(provider) as client:
        client.post("/track/lead", json=LEAD)
        client.post("/track/lead", json={**LEAD, "customerExternalId": "u2", "mode": "wait"})
        early = client.post("/track/sale", json=SALE)
        waited = client.post("/track/sale", json={**SALE, "customerExternalId": "u2"})
        provider.advance(3600)
        later = client.post("/track/sale", json=SALE)
    assert refusal(early) == (404, "lead_not_found", False)  # retried: it shows later
    assert waited.json()["sale"] is not None and later.json()["sale"] is not None
    assert [c["externalId"] for c in provider.customers()] == ["u1", "u2"]  # Dub: at once


def test_a_pimms_async_lead_makes_its_customer_in_the_background_and_the_invoice_is_lost() -> None:
    provider = FakeProvider("pimms", lead_delay=3600.0)
    lead = {"clickId": "clk_1", "eventName": "Sign up", "externalId": "u1"}
    sale = {"externalId": "u1", "amount": 4900, "paymentProcessor": "stripe", "invoiceId": "in_1"}
    with client_of(provider) as client:
        client.post("/track/lead", json=lead)
        client.post("/track/lead", json={**lead, "externalId": "u2", "mode": "wait"})
        early = client.post("/track/sale", json=sale)
        waited = client.post("/track/sale", json={**sale, "externalId": "u2", "invoiceId": "in_2"})
        hidden = [c["externalId"] for c in provider.customers()]
        provider.advance(3600)
        again = client.post("/track/sale", json=sale)
    assert early.json()["sale"] is None and hidden == ["u2"]
    assert waited.json()["sale"] is not None
    assert again.json()["sale"] is None  # the invoice was claimed by the early sale, for 7 days
    assert [s["invoiceId"] for s in provider.sales()] == ["in_2"]
