"""The fake's ``/track/click``, signed webhooks and commissions, over real sockets."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from asgi_attribution.testing import FakeProvider, serve_in_thread

AUTH = {"Authorization": "Bearer test-key"}
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}
PARTNER = {"id": "pn_1", "name": "John", "image": None, "groupId": "grp_1", "tenantId": None}
DISCOUNT = {"id": "disc_1", "amount": 20, "type": "percentage", "maxDuration": 3}
LINKS = {
    ("go.acme.com", "john"): {"partner": PARTNER, "discount": DISCOUNT},
    ("go.acme.com", "plain"): {},
}
CLICK = {"domain": "go.acme.com", "key": "john", "url": "https://acme.com/?via=john"}
SECRET = "whsec_0123456789abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- /track/click ---------------------------------------------------------------------------------


def test_track_click_answers_partner_and_discount_and_records_the_click() -> None:
    provider = FakeProvider("dub", links=LINKS, known_clicks=set())
    with serve_in_thread(provider) as url, httpx.Client(base_url=url, headers=BROWSER) as client:
        clicked = client.post("/track/click", json=CLICK)  # no API key: the browser calls it
        plain = client.post("/track/click", json={**CLICK, "key": "plain"})
        unknown = client.post("/track/click", json={**CLICK, "key": "nobody"})
        bad = client.post("/track/click", json={"domain": "go.acme.com"})
        preflight = client.options("/track/click")
        click_id = clicked.json()["clickId"]
        lead = {"clickId": click_id, "eventName": "Sign up", "customerExternalId": "u1"}
        known = client.post("/track/lead", json=lead, headers=AUTH)
        stranger = client.post(
            "/track/lead", json={**lead, "clickId": "clk_x", "eventName": "e"}, headers=AUTH
        )
        listed = client.get("/_fake/clicks").json()

    assert clicked.status_code == 200
    assert clicked.json() == {
        "clickId": click_id,
        "partner": PARTNER,
        "discount": {**DISCOUNT, "couponId": None, "couponTestId": None},
    }
    assert clicked.headers["access-control-allow-origin"] == "*"
    assert plain.json() == {"clickId": plain.json()["clickId"]}
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert bad.status_code == 422
    assert preflight.status_code == 204
    # A click made here is a known click for leads; an unknown one is not.
    assert known.status_code == 200
    assert known.json()["link"]["partnerId"] == "pn_1"
    assert stranger.status_code == 404
    clicks = provider.clicks()
    assert (clicks[0].id, clicks[0].key, clicks[0].url, clicks[0].partner) == (
        click_id,
        "john",
        CLICK["url"],
        PARTNER,
    )
    assert [c["id"] for c in listed["clicks"]] == [c.id for c in clicks]


def test_the_same_visitor_gets_the_same_click_id_for_an_hour() -> None:
    provider = FakeProvider("dub", links=LINKS, clock=lambda: 1_700_000_000.0)
    with serve_in_thread(provider) as url, httpx.Client(base_url=url, headers=BROWSER) as client:
        first = client.post("/track/click", json=CLICK).json()["clickId"]
        again = client.post("/track/click", json=CLICK).json()["clickId"]
        other_ua = client.post("/track/click", json=CLICK, headers={"User-Agent": "Safari/17"})
        other_ip = client.post("/track/click", json=CLICK, headers={"X-Forwarded-For": "9.9.9.9"})
        other_link = client.post("/track/click", json={**CLICK, "key": "plain"})
        provider.advance(3600)
        later = client.post("/track/click", json=CLICK).json()["clickId"]
    assert first == again
    others = {other_ua.json()["clickId"], other_ip.json()["clickId"], other_link.json()["clickId"]}
    assert first not in others and len(others) == 3
    assert later != first
    assert len(provider.clicks()) == 5


@pytest.mark.parametrize(
    "user_agent", ["python-httpx/0.27", "Mozilla/5.0 (compatible; +HTTP://bot)"]
)
def test_a_bot_gets_a_click_id_that_is_not_recorded(user_agent: str) -> None:
    provider = FakeProvider("dub", links=LINKS, known_clicks=set())
    with serve_in_thread(provider) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/track/click", json=CLICK, headers={"User-Agent": user_agent})
        click_id = answer.json()["clickId"]
        lead = {"clickId": click_id, "eventName": "Sign up", "customerExternalId": "u1"}
        lead_answer = client.post("/track/lead", json=lead, headers=AUTH)
    assert answer.status_code == 200 and click_id
    assert provider.clicks() == []
    assert lead_answer.status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://acme.com"}, 200),
        ({"Referer": "https://www.acme.com/pricing"}, 200),
        ({"Origin": "https://app.acme.com"}, 200),
        ({"Origin": "https://evil.example"}, 403),
        ({"Referer": "https://acme.com.evil.example/"}, 403),
        ({}, 403),
    ],
)
def test_allowed_hostnames_are_checked(headers: dict[str, str], status: int) -> None:
    provider = FakeProvider("dub", links=LINKS, allowed_hostnames=["acme.com", "*.acme.com"])
    with serve_in_thread(provider) as url, httpx.Client(base_url=url, headers=BROWSER) as client:
        response = client.post("/track/click", json=CLICK, headers=headers)
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"]["code"] == "forbidden"
        assert provider.clicks() == []


# -- webhooks -------------------------------------------------------------------------------------


class Receiver:
    """A webhook endpoint: keeps each request's headers and raw body."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            self.received.append((headers, body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _verifies(secret: str, body: bytes, signature: str) -> bool:
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "header"), [("dub", "dub-signature"), ("pimms", "pimms-signature")]
)
async def test_webhooks_are_signed_with_the_secret_as_given(name: Any, header: str) -> None:
    receiver = Receiver()
    provider = FakeProvider(name, webhook_secret=SECRET, clock=lambda: 1_700_000_000.0)
    with serve_in_thread(receiver) as url:
        sent = await provider.send_webhook(f"{url}/hook", event="sale.created", data={"x": "é"})
    assert sent.status == 200
    [(headers, body)] = receiver.received
    payload = json.loads(body)
    assert payload["id"].startswith("evt_")
    assert (payload["event"], payload["data"]) == ("sale.created", {"x": "é"})
    assert payload["createdAt"] == "2023-11-14T22:13:20.000Z"
    assert _verifies(SECRET, body, headers[header])
    flipped = bytes([body[0] ^ 1]) + body[1:]
    assert not _verifies(SECRET, flipped, headers[header])
    assert provider.webhooks() == [sent]


def test_recorded_events_send_webhooks_to_webhook_url() -> None:
    receiver = Receiver()
    with serve_in_thread(receiver) as hook_url:
        provider = FakeProvider("dub", webhook_secret=SECRET, webhook_url=f"{hook_url}/hook")
        with serve_in_thread(provider) as url, httpx.Client(base_url=url, headers=AUTH) as client:
            lead = {"clickId": "clk_1", "eventName": "Sign up", "customerExternalId": "u1"}
            client.post("/track/lead", json=lead)
            client.post("/track/lead", json=lead)  # a duplicate: no webhook
            sale = {"customerExternalId": "u1", "amount": 100, "paymentProcessor": "stripe"}
            client.post("/track/sale", json=sale)
            client.post("/track/sale", json={**sale, "amount": 0})  # not recorded: none
            sent = client.post(
                "/_fake/webhooks", json={"url": f"{hook_url}/hook", "event": "commission.created"}
            )
    events = [json.loads(body)["event"] for _, body in receiver.received]
    assert events == ["lead.created", "sale.created", "commission.created"]
    assert sent.json()["status"] == 200
    assert all(_verifies(SECRET, body, h["dub-signature"]) for h, body in receiver.received)
    sale_data = json.loads(receiver.received[1][1])["data"]
    assert sale_data["sale"]["amount"] == 100
    assert sale_data["customer"]["externalId"] == "u1"


def test_webhook_options_that_cannot_work_raise() -> None:
    with pytest.raises(ValueError, match="webhook_secret"):
        FakeProvider("dub", webhook_url="http://127.0.0.1:9/hook")


# -- commissions ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_commissions_for_refunds() -> None:
    provider = FakeProvider("dub", commission_rate=0.3)
    transport = httpx.ASGITransport(provider)
    async with httpx.AsyncClient(transport=transport, base_url="http://f.test", headers=AUTH) as c:
        lead = {"clickId": "clk_1", "eventName": "Sign up", "customerExternalId": "u1"}
        await c.post("/track/lead", json=lead)
        sale = {"customerExternalId": "u1", "amount": 10000, "paymentProcessor": "stripe"}
        await c.post("/track/sale", json={**sale, "invoiceId": "in_1"})
        await c.post("/track/sale", json={**sale, "invoiceId": "in_2"})
        [commission] = (await c.get("/commissions", params={"invoiceId": "in_1"})).json()
        partial = await c.patch(f"/commissions/{commission['id']}", json={"amount": 4000})
        full = await c.patch(f"/commissions/{commission['id']}", json={"status": "refunded"})
        unknown = await c.patch("/commissions/cm_nope", json={"status": "refunded"})
        typo = await c.patch(f"/commissions/{commission['id']}", json={"state": "refunded"})
        refunded = (await c.get("/commissions", params={"status": "refunded"})).json()
        no_auth = await c.get("/commissions", headers={"Authorization": ""})
    assert commission["id"].startswith("cm_")
    assert (commission["invoiceId"], commission["amount"], commission["earnings"]) == (
        "in_1",
        10000,
        3000,
    )
    assert (commission["status"], commission["type"]) == ("pending", "sale")
    assert commission["customer"]["externalId"] == "u1"
    assert (partial.json()["amount"], partial.json()["earnings"]) == (4000, 1200)
    assert full.json()["status"] == "refunded"
    assert unknown.status_code == 404
    assert typo.status_code == 422
    assert [r["id"] for r in refunded] == [commission["id"]]
    assert no_auth.status_code == 401
    assert len(provider.commissions()) == 2


def test_a_commission_shows_only_after_commission_delay() -> None:
    provider = FakeProvider("dub", commission_delay=5.0, clock=lambda: 1_700_000_000.0)
    with serve_in_thread(provider) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        lead = {"clickId": "clk_1", "eventName": "Sign up", "customerExternalId": "u1"}
        client.post("/track/lead", json=lead)
        sale = {"customerExternalId": "u1", "amount": 100, "invoiceId": "in_1"}
        client.post("/track/sale", json={**sale, "paymentProcessor": "stripe"})
        still_creating = client.get("/commissions", params={"invoiceId": "in_1"}).json()
        client.post("/_fake/clock", json={"advance": 5})
        created = client.get("/commissions", params={"invoiceId": "in_1"}).json()
    assert still_creating == []
    assert [c["invoiceId"] for c in created] == ["in_1"]


def test_commissions_are_dubs_only() -> None:
    provider = FakeProvider("pimms")
    with serve_in_thread(provider) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        assert client.get("/commissions").status_code == 404
        assert client.patch("/commissions/cm_1", json={}).status_code == 404


def test_no_commissions_when_turned_off() -> None:
    async def run() -> list[Any]:
        provider = FakeProvider("dub", commissions=False)
        transport = httpx.ASGITransport(provider)
        async with httpx.AsyncClient(transport=transport, base_url="http://f", headers=AUTH) as c:
            lead = {"clickId": "clk_1", "eventName": "Sign up", "customerExternalId": "u1"}
            await c.post("/track/lead", json=lead)
            sale = {"customerExternalId": "u1", "amount": 100, "paymentProcessor": "stripe"}
            await c.post("/track/sale", json=sale)
            listed: list[Any] = (await c.get("/commissions")).json()
            return listed

    assert anyio.run(run) == []
