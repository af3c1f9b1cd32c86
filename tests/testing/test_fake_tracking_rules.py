"""The fake provider answers leads, sales and customer updates as Dub's and PIMMS' servers do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from asgi_attribution.testing import FakeProvider

AUTH = {"Authorization": "Bearer test-key"}
WEEK = 7 * 24 * 3600
LEAD: dict[str, Any] = {"clickId": "clk_1", "eventName": "Sign up", "customerExternalId": "u1"}
SALE: dict[str, Any] = {
    "customerExternalId": "u1",
    "amount": 4900,
    "paymentProcessor": "stripe",
    "invoiceId": "in_1",
}
PIMMS_LEAD: dict[str, Any] = {"clickId": "clk_1", "eventName": "Sign up", "externalId": "u1"}
PIMMS_SALE: dict[str, Any] = {
    "externalId": "u1",
    "amount": 4900,
    "paymentProcessor": "stripe",
    "invoiceId": "in_1",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """A clock the test steps by hand (the fake's own ``advance`` is tested too)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider("dub")


@pytest.fixture
async def client(provider: FakeProvider) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(provider) as c:
        yield c


def _client(provider: FakeProvider) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(provider)
    return httpx.AsyncClient(transport=transport, base_url="http://fake.test", headers=AUTH)


# -- leads ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_repeated_lead_answers_link_null_and_records_nothing(
    provider: FakeProvider,
    client: httpx.AsyncClient,
) -> None:
    first = await client.post("/track/lead", json=LEAD)
    again = await client.post("/track/lead", json=LEAD)
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["link"]["id"]
    assert again.json()["link"] is None
    assert provider.leads() == [LEAD]
    assert [r.status for r in provider.requests] == [200, 200]


@pytest.mark.anyio
async def test_event_names_are_one_key_lowercased_with_spaces_as_dashes(
    provider: FakeProvider,
    client: httpx.AsyncClient,
) -> None:
    links = []
    for name in ("Sign up", "sign-up", "SIGN UP", "  Sign up  "):
        response = await client.post("/track/lead", json={**LEAD, "eventName": name})
        links.append(response.json()["link"])
    other = await client.post("/track/lead", json={**LEAD, "eventName": "Signup"})
    assert [link is None for link in links] == [False, True, True, True]
    assert other.json()["link"] is not None
    assert [lead["eventName"] for lead in provider.leads()] == ["Sign up", "Signup"]


@pytest.mark.anyio
async def test_click_not_found_is_404_and_still_reserves_the_key() -> None:
    provider = FakeProvider("dub", known_clicks={"clk_ok"})
    async with _client(provider) as client:
        missing = await client.post("/track/lead", json={**LEAD, "clickId": "clk_gone"})
        retry = await client.post("/track/lead", json={**LEAD, "clickId": "clk_ok"})
        other_event = await client.post(
            "/track/lead", json={**LEAD, "clickId": "clk_ok", "eventName": "Trial"}
        )
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "not_found",
        "message": "Click event not found for clickId: clk_gone",
        "doc_url": "https://dub.co/docs/api-reference/errors#not-found",
    }
    # The key was written before the click lookup: the good retry is a duplicate.
    assert retry.status_code == 200
    assert retry.json()["link"] is None
    assert other_event.json()["link"] is not None
    assert [lead["eventName"] for lead in provider.leads()] == ["Trial"]


@pytest.mark.anyio
async def test_the_lead_key_lapses_after_seven_days_on_dub() -> None:
    clock = Clock()
    provider = FakeProvider("dub", clock=clock)
    async with _client(provider) as client:
        await client.post("/track/lead", json=LEAD)
        clock.now += WEEK - 1
        within = await client.post("/track/lead", json=LEAD)
        provider.advance(1)
        after = await client.post("/track/lead", json=LEAD)
    assert within.json()["link"] is None
    assert after.json()["link"] is not None
    assert provider.leads() == [LEAD, LEAD]


@pytest.mark.anyio
async def test_pimms_keeps_the_lead_key_forever_and_answers_the_same() -> None:
    provider = FakeProvider("pimms", clock=Clock())
    async with _client(provider) as client:
        first = await client.post("/track/lead", json=PIMMS_LEAD)
        provider.advance(365 * 24 * 3600)
        again = await client.post("/track/lead", json=PIMMS_LEAD)
        # PIMMS replaces only the first space: these are two keys there.
        one = await client.post("/track/lead", json={**PIMMS_LEAD, "eventName": "Paid a b"})
        two = await client.post("/track/lead", json={**PIMMS_LEAD, "eventName": "paid-a-b"})
    assert [r.status_code for r in (first, again, one, two)] == [200] * 4
    assert "link" not in first.json()
    assert first.json()["clickId"] == "clk_1"  # PIMMS' older top-level copy
    assert again.json()["customer"]["externalId"] == "u1"
    assert [lead["eventName"] for lead in provider.leads()] == ["Sign up", "Paid a b", "paid-a-b"]


@pytest.mark.anyio
async def test_a_whitespace_click_id_is_an_empty_one(client: httpx.AsyncClient) -> None:
    # Dub takes an empty click id (deferred flow): trimmed, it needs a known customer (400).
    dub = await client.post("/track/lead", json={**LEAD, "clickId": "   "})
    async with _client(FakeProvider("pimms")) as pimms_client:
        pimms = await pimms_client.post("/track/lead", json={**PIMMS_LEAD, "clickId": "   "})
    assert dub.status_code == 400
    assert pimms.status_code == 422
    assert pimms.json()["error"]["message"].startswith("clickId:")


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["eventName", "customerExternalId"])
async def test_whitespace_only_is_refused_after_trimming(
    client: httpx.AsyncClient, field: str
) -> None:
    response = await client.post("/track/lead", json={**LEAD, field: " \t "})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(f"{field}:")


@pytest.mark.anyio
async def test_ids_are_trimmed_before_they_become_keys(client: httpx.AsyncClient) -> None:
    await client.post("/track/lead", json=LEAD)
    again = await client.post("/track/lead", json={**LEAD, "customerExternalId": "  u1 "})
    assert again.json()["link"] is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"customerExternalId": "😀" * 50}, 200),  # 100 UTF-16 code units
        ({"customerExternalId": "😀" * 51}, 422),  # 51 code points, but 102 units
        ({"customerName": "é" * 100}, 200),
        ({"customerName": "😀" * 50 + "x"}, 422),
        ({"customerAvatar": "https://img.example/a.png"}, 200),
        ({"customerAvatar": "a picture"}, 422),
    ],
)
async def test_lengths_are_javascript_lengths_and_avatars_urls(
    client: httpx.AsyncClient, changes: dict[str, Any], status: int
) -> None:
    response = await client.post("/track/lead", json={**LEAD, **changes})
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["error"]["message"].startswith(f"{next(iter(changes))}:")


@pytest.mark.anyio
async def test_an_empty_click_id_takes_the_customers_click_or_is_400(
    provider: FakeProvider,
    client: httpx.AsyncClient,
) -> None:
    no_customer = await client.post("/track/lead", json={**LEAD, "clickId": ""})
    deferred = await client.post("/track/lead", json={**LEAD, "mode": "deferred"})
    # Deferred writes no key: the same lead can be sent again later without the click.
    later = await client.post("/track/lead", json={**LEAD, "clickId": ""})
    assert no_customer.status_code == 400
    assert no_customer.json()["error"]["code"] == "bad_request"
    assert deferred.status_code == later.status_code == 200
    assert later.json()["click"] == {"id": "clk_1"}
    assert later.json()["link"] is not None
    assert [lead.get("mode") for lead in provider.leads()] == ["deferred", None]


# -- sales ----------------------------------------------------------------------------------------

NULLS = {"eventName": "Purchase", "customer": None, "sale": None}


@pytest.mark.anyio
async def test_a_sale_of_nothing_answers_nulls(
    provider: FakeProvider, client: httpx.AsyncClient
) -> None:
    await client.post("/track/lead", json=LEAD)
    response = await client.post("/track/sale", json={**SALE, "amount": 0})
    assert (response.status_code, response.json()) == (200, NULLS)
    assert provider.sales() == []


@pytest.mark.anyio
async def test_a_sale_without_customer_or_click_answers_nulls(
    provider: FakeProvider, client: httpx.AsyncClient
) -> None:
    response = await client.post("/track/sale", json=SALE)
    assert (response.status_code, response.json()) == (200, NULLS)
    assert provider.sales() == []
    assert provider.customers() == []


@pytest.mark.anyio
async def test_a_sale_with_a_click_creates_the_customer() -> None:
    provider = FakeProvider("dub", known_clicks={"clk_1"})
    async with _client(provider) as client:
        unknown = await client.post("/track/sale", json={**SALE, "clickId": "clk_9"})
        direct = await client.post("/track/sale", json={**SALE, "clickId": "clk_1"})
        later = await client.post("/track/sale", json={**SALE, "invoiceId": "in_2"})
    assert unknown.status_code == 404
    assert direct.status_code == later.status_code == 200
    assert direct.json()["customer"]["externalId"] == "u1"
    assert [c["clickId"] for c in provider.customers()] == ["clk_1"]
    assert len(provider.sales()) == 2


@pytest.mark.anyio
async def test_a_repeated_invoice_is_answered_from_cache_for_a_week() -> None:
    provider = FakeProvider("dub", clock=Clock())
    async with _client(provider) as client:
        await client.post("/track/lead", json=LEAD)
        first = await client.post("/track/sale", json=SALE)
        again = await client.post("/track/sale", json={**SALE, "amount": 1})
        provider.advance(WEEK)
        after = await client.post("/track/sale", json={**SALE, "amount": 2})
    assert again.json() == first.json()
    assert after.json()["sale"]["amount"] == 2
    assert [s["amount"] for s in provider.sales()] == [4900, 2]


@pytest.mark.anyio
async def test_an_invoice_is_written_only_after_a_record_on_dub(
    client: httpx.AsyncClient,
) -> None:
    early = await client.post("/track/sale", json=SALE)  # no customer yet: nulls, no key
    await client.post("/track/lead", json=LEAD)
    late = await client.post("/track/sale", json=SALE)
    assert early.json() == NULLS
    assert late.json()["sale"]["invoiceId"] == "in_1"


@pytest.mark.anyio
async def test_a_sale_naming_a_missing_lead_event_is_404(client: httpx.AsyncClient) -> None:
    await client.post("/track/lead", json=LEAD)
    wrong = await client.post("/track/sale", json={**SALE, "leadEventName": "Trial"})
    right = await client.post("/track/sale", json={**SALE, "leadEventName": "Sign up"})
    assert wrong.status_code == 404
    assert wrong.json()["error"]["code"] == "not_found"
    assert right.status_code == 200


@pytest.mark.anyio
async def test_pimms_reserves_the_invoice_first_and_ignores_clicks() -> None:
    provider = FakeProvider("pimms")
    nulls = {"eventName": "Purchase", "customer": None, "sale": None}
    async with _client(provider) as client:
        before_lead = await client.post("/track/sale", json={**PIMMS_SALE, "clickId": "clk_1"})
        await client.post("/track/lead", json=PIMMS_LEAD)
        reserved = await client.post("/track/sale", json=PIMMS_SALE)
        fresh = await client.post("/track/sale", json={**PIMMS_SALE, "invoiceId": "in_2"})
        repeat = await client.post("/track/sale", json={**PIMMS_SALE, "invoiceId": "in_2"})
        free = await client.post(
            "/track/sale", json={**PIMMS_SALE, "invoiceId": "in_3", "amount": 0}
        )
    assert before_lead.json() == nulls  # no direct sale tracking on PIMMS
    assert reserved.json() == nulls  # the first attempt took the invoice id
    assert fresh.json()["sale"]["invoiceId"] == "in_2"
    assert fresh.json()["amount"] == 4900  # PIMMS' older top-level copy
    assert repeat.json() == nulls
    assert free.json()["sale"]["amount"] == 0  # PIMMS records a sale of 0
    assert [s["invoiceId"] for s in provider.sales()] == ["in_2", "in_3"]


# -- customers ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_customer_updates_need_a_known_customer(
    provider: FakeProvider, client: httpx.AsyncClient
) -> None:
    unknown = await client.patch("/customers/ext_u1", json={"name": "Ada"})
    await client.post("/track/lead", json=LEAD)
    await client.post("/track/lead", json={**LEAD, "customerExternalId": "u/2"})
    by_external_id = await client.patch(
        "/customers/ext_u1", json={"name": "Ada", "email": "ada@example.com", "country": "FR"}
    )
    escaped = await client.patch("/customers/ext_u%2F2", json={"stripeCustomerId": "cus_S1"})
    by_id = await client.patch(f"/customers/{by_external_id.json()['id']}", json={"name": "Ada L"})
    taken = await client.patch("/customers/ext_u1", json={"externalId": "u/2"})
    renamed = await client.patch("/customers/ext_u1", json={"externalId": "u3"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert by_external_id.json()["email"] == "ada@example.com"
    assert by_external_id.json()["country"] is None  # Dub's route reads it and drops it
    assert escaped.json()["stripeCustomerId"] == "cus_S1"
    assert by_id.json()["name"] == "Ada L"
    assert taken.status_code == 409
    assert renamed.json()["externalId"] == "u3"
    assert sorted(c["externalId"] for c in provider.customers()) == ["u/2", "u3"]


@pytest.mark.anyio
async def test_track_customer_is_gone_unless_asked_for() -> None:
    async with _client(FakeProvider("dub")) as client:
        gone = await client.post("/track/customer", json={"customerId": "u1"})
    async with _client(FakeProvider("dub", legacy_routes=True)) as client:
        legacy = await client.post("/track/customer", json={"customerId": "u1"})
    assert (gone.status_code, legacy.status_code) == (404, 200)
    with pytest.raises(ValueError, match="legacy_routes"):
        FakeProvider("pimms", legacy_routes=True)
