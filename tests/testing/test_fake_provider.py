"""Tests for the fake provider: in-process through ASGITransport, faults over real sockets."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread
from asgi_attribution.testing.fake_provider import ConnectionDropped

AUTH = {"Authorization": "Bearer test-key"}
LEAD: dict[str, Any] = {
    "clickId": "clk_1",
    "eventName": "Sign up",
    "customerExternalId": "user_1",
    "customerEmail": "ada@example.com",
}
SALE: dict[str, Any] = {
    "customerExternalId": "user_1",
    "amount": 4900,
    "currency": "usd",
    "paymentProcessor": "stripe",
    "invoiceId": "in_1",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client(provider: FakeProvider, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(provider),
        base_url="http://fake.test",
        headers={**AUTH, **headers},
    )


@pytest.fixture
async def dub() -> AsyncIterator[tuple[FakeProvider, httpx.AsyncClient]]:
    provider = FakeProvider("dub")
    async with _client(provider) as client:
        yield provider, client


# -- happy paths ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_dub_lead_sale_and_customer_are_accepted_and_recorded() -> None:
    # POST /track/customer left Dub in December 2024: only served on request.
    provider = FakeProvider("dub", legacy_routes=True)
    async with _client(provider) as client:
        lead = await client.post("/track/lead", json=LEAD)
        sale = await client.post("/track/sale", json=SALE)
        patched = await client.patch("/customers/ext_user_1", json={"name": "Ada"})
        legacy = await client.post("/track/customer", json={"customerId": "user_2"})

    assert [r.status_code for r in (lead, sale, patched, legacy)] == [200, 200, 200, 200]
    assert lead.json()["click"] == {"id": "clk_1"}
    assert lead.json()["customer"]["externalId"] == "user_1"
    assert sale.json()["sale"]["amount"] == 4900
    # One customer, one id, whichever endpoint names it.
    assert patched.json()["id"] == sale.json()["customer"]["id"]
    assert patched.json()["name"] == "Ada"
    assert provider.leads() == [LEAD]
    assert provider.sales() == [SALE]
    assert [r.path for r in provider.accepted] == [
        "/track/lead",
        "/track/sale",
        "/customers/ext_user_1",
        "/track/customer",
    ]
    assert provider.accepted[2].method == "PATCH"
    assert provider.accepted[0].headers["authorization"] == "Bearer test-key"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "changes",
    [
        {"eventName": "e" * 255},
        {"customerExternalId": "u" * 100},
        {"eventQuantity": 1},
        {"eventQuantity": 100},
        {"mode": "deferred"},
        {"customerName": None, "customerEmail": None, "customerAvatar": None, "metadata": None},
        {"customerEmail": "o'brien+tag@mail.example.co.uk"},
        # Exactly 10,000 characters of compact JSON; non-ASCII counts once, as in JS.
        {"metadata": {"k": "x" * 9992}},
        {"metadata": {"k": "é" * 9992}},
    ],
)
async def test_lead_values_at_the_limits_are_accepted(
    dub: tuple[FakeProvider, httpx.AsyncClient], changes: dict[str, Any]
) -> None:
    provider, client = dub
    response = await client.post("/track/lead", json={**LEAD, **changes})
    assert response.status_code == 200, response.text
    assert provider.leads() == [{**LEAD, **changes}]


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/track/lead", _without(LEAD, "clickId"), "clickId"),
        ("/track/lead", {**LEAD, "clickId": None}, "clickId"),
        ("/track/lead", {**LEAD, "eventName": ""}, "eventName"),
        ("/track/lead", {**LEAD, "eventName": "e" * 256}, "eventName"),
        ("/track/lead", _without(LEAD, "customerExternalId"), "customerExternalId"),
        ("/track/lead", {**LEAD, "customerExternalId": ""}, "customerExternalId"),
        ("/track/lead", {**LEAD, "customerExternalId": "u" * 101}, "customerExternalId"),
        ("/track/lead", {**LEAD, "customerName": "n" * 101}, "customerName"),
        ("/track/lead", {**LEAD, "customerEmail": "not-an-email"}, "customerEmail"),
        ("/track/lead", {**LEAD, "customerEmail": ".ada@example.com"}, "customerEmail"),
        ("/track/lead", {**LEAD, "customerEmail": "a" * 90 + "@example.com"}, "customerEmail"),
        ("/track/lead", {**LEAD, "customerAvatar": 7}, "customerAvatar"),
        ("/track/lead", {**LEAD, "eventQuantity": 0}, "eventQuantity"),
        ("/track/lead", {**LEAD, "eventQuantity": 101}, "eventQuantity"),
        ("/track/lead", {**LEAD, "eventQuantity": 1.5}, "eventQuantity"),
        ("/track/lead", {**LEAD, "mode": "later"}, "mode"),
        ("/track/lead", {**LEAD, "metadata": "text"}, "metadata"),
        ("/track/lead", {**LEAD, "metadata": {"k": "x" * 9993}}, "metadata"),
        ("/track/sale", _without(SALE, "customerExternalId"), "customerExternalId"),
        ("/track/sale", _without(SALE, "amount"), "amount"),
        ("/track/sale", {**SALE, "amount": -1}, "amount"),
        ("/track/sale", {**SALE, "amount": "4900"}, "amount"),
        ("/track/sale", {**SALE, "currency": None}, "currency"),
        ("/track/sale", {**SALE, "eventName": "e" * 256}, "eventName"),
        ("/track/sale", {**SALE, "paymentProcessor": "venmo"}, "paymentProcessor"),
        ("/track/sale", {**SALE, "invoiceId": 17}, "invoiceId"),
        ("/track/sale", {**SALE, "customerEmail": "ada@"}, "customerEmail"),
        ("/customers/ext_user_1", {"email": "nope"}, "email"),
        ("/customers/ext_", {"name": "Ada"}, "id"),
        ("/track/lead", [LEAD], "body"),
    ],
)
async def test_invalid_field_is_422_naming_the_field(
    dub: tuple[FakeProvider, httpx.AsyncClient], path: str, body: Any, field: str
) -> None:
    provider, client = dub
    method = "PATCH" if path.startswith("/customers/") else "POST"

    response = await client.request(method, path, json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unprocessable_entity"
    assert error["message"].split(":")[0] == field, error["message"]
    assert provider.accepted == []
    assert [r.status for r in provider.requests] == [422]


@pytest.mark.anyio
async def test_legacy_customer_route_validates_its_body() -> None:
    async with _client(FakeProvider("dub", legacy_routes=True)) as client:
        response = await client.post("/track/customer", json={"customerName": "Ada"})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("customerId:")


@pytest.mark.anyio
async def test_invalid_json_is_400(dub: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    provider, client = dub
    response = await client.post("/track/lead", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert [(r.status, r.body) for r in provider.requests] == [(400, None)]


@pytest.mark.anyio
async def test_unknown_route_is_404_and_not_recorded(
    dub: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    provider, client = dub
    assert (await client.post("/track/open", json={})).status_code == 404
    assert (await client.get("/track/lead")).status_code == 404
    assert (await client.post("/track/customer", json={"customerId": "u"})).status_code == 404
    assert provider.requests == []


# -- dialects -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_strict_dub_rejects_pimms_field_name(
    dub: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    provider, client = dub
    response = await client.post("/track/lead", json={**LEAD, "externalId": "user_1"})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("externalId:")
    assert provider.accepted == []


@pytest.mark.anyio
async def test_lenient_dub_ignores_unknown_keys_but_records_them() -> None:
    provider = FakeProvider("dub", strict=False)
    async with _client(provider) as client:
        response = await client.post("/track/lead", json={**LEAD, "externalId": "user_1"})
    assert response.status_code == 200
    assert provider.leads() == [{**LEAD, "externalId": "user_1"}]


@pytest.mark.anyio
async def test_pimms_dialect() -> None:
    provider = FakeProvider("pimms")
    pimms_lead = {**_without(LEAD, "customerExternalId"), "externalId": "user_1"}
    pimms_sale = {**_without(SALE, "customerExternalId"), "externalId": "user_1"}
    async with _client(provider) as client:
        lead = await client.post("/track/lead", json=pimms_lead)
        sale = await client.post("/track/sale", json=pimms_sale)
        dub_shaped = await client.post("/track/lead", json={**LEAD, "eventName": "Other"})
        deferred = await client.post("/track/lead", json={**pimms_lead, "mode": "deferred"})
        customers = await client.patch("/customers/ext_user_1", json={"name": "Ada"})
        dub_customer = await client.patch("/customers/ext_user_1", json={"country": "FR"})
        legacy = await client.post("/track/customer", json={"customerId": "user_1"})
        no_click = await client.post("/track/lead", json={**pimms_lead, "clickId": ""})

    assert (lead.status_code, sale.status_code) == (200, 200)
    assert lead.json()["customer"]["externalId"] == "user_1"
    assert dub_shaped.status_code == 422
    assert "customerExternalId:" in dub_shaped.json()["error"]["message"]
    assert deferred.status_code == 422
    assert deferred.json()["error"]["message"].startswith("mode:")
    assert customers.status_code == 200
    assert customers.json()["externalId"] == "user_1"
    assert dub_customer.status_code == 422  # Dub's stripeCustomerId/country are Dub's only
    assert legacy.status_code == 404  # PIMMS has no POST /track/customer
    assert no_click.status_code == 422  # PIMMS refuses an empty click id
    assert no_click.json()["error"]["message"].startswith("clickId:")
    assert provider.leads() == [pimms_lead]
    assert provider.sales() == [pimms_sale]


# -- auth -----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("api_key", "authorization", "status"),
    [
        (None, None, 401),
        (None, "Basic dXNlcjpwYXNz", 401),
        (None, "Bearer ", 401),
        (None, "Bearer anything", 200),
        ("secret", "Bearer wrong", 401),
        ("secret", "Bearer secret", 200),
    ],
)
async def test_bearer_auth(api_key: str | None, authorization: str | None, status: int) -> None:
    provider = FakeProvider("dub", api_key=api_key)
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(provider), base_url="http://fake.test"
    ) as client:
        response = await client.post("/track/lead", json=LEAD, headers=headers)

    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["code"] == "unauthorized"
    assert [r.status for r in provider.requests] == [status]
    assert len(provider.accepted) == (status == 200)


# -- dedup and idempotency keys -------------------------------------------------------------------


@pytest.mark.anyio
async def test_duplicate_lead_answers_200_but_is_recorded_once(
    dub: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    provider, client = dub
    first = await client.post("/track/lead", json=LEAD)
    again = await client.post("/track/lead", json={**LEAD, "clickId": "clk_2"})
    other_event = await client.post("/track/lead", json={**LEAD, "eventName": "Trial"})

    assert [r.status_code for r in (first, again, other_event)] == [200, 200, 200]
    # Dub answers a repeat with "link": null and the click id it was sent.
    assert first.json()["link"] is not None
    assert again.json() == {**first.json(), "link": None, "click": {"id": "clk_2"}}
    assert [lead["eventName"] for lead in provider.leads()] == ["Sign up", "Trial"]
    assert len(provider.requests) == 3


@pytest.mark.anyio
async def test_deferred_then_real_lead_are_both_recorded(
    dub: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    provider, client = dub
    await client.post("/track/lead", json={**LEAD, "mode": "deferred"})
    await client.post("/track/lead", json={**LEAD, "clickId": ""})
    assert [lead.get("mode") for lead in provider.leads()] == ["deferred", None]


@pytest.mark.anyio
async def test_sales_dedup_by_invoice_id_only(dub: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    provider, client = dub
    await client.post("/track/lead", json=LEAD)  # the sales need a customer with a lead
    no_invoice = _without(SALE, "invoiceId")
    answers = [(await client.post("/track/sale", json=body)) for body in (SALE, SALE, no_invoice)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[1].json() == answers[0].json()  # Dub answers a repeated invoice from cache
    assert (await client.post("/track/sale", json=no_invoice)).status_code == 200
    assert provider.sales() == [SALE, no_invoice, no_invoice]


@pytest.mark.anyio
async def test_idempotency_keys_are_recorded_and_counted(
    dub: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    provider, client = dub
    await client.post("/track/lead", json=LEAD, headers={"Idempotency-Key": "k1"})
    await client.post("/track/lead", json=LEAD, headers={"Idempotency-Key": "k1"})  # a retry
    await client.post("/track/sale", json=SALE, headers={"Idempotency-Key": "k2"})
    await client.post("/track/sale", json={}, headers={"Idempotency-Key": "k3"})  # 422
    await client.post("/track/sale", json={**SALE, "invoiceId": "in_2"})

    assert provider.count_by_idempotency_key() == {"k1": 2, "k2": 1}
    assert [r.idempotency_key for r in provider.accepted] == ["k1", "k2", None]


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_error_fault_is_503_with_dub_error_body_and_records_nothing() -> None:
    provider = FakeProvider(faults=Faults(error_rate=1.0))
    async with _client(provider) as client:
        response = await client.post("/track/lead", json=LEAD)
    assert response.status_code == 503
    assert set(response.json()["error"]) == {"code", "message", "doc_url"}
    assert provider.requests == provider.accepted == []


def _retry_at(form: str | None, header: str) -> float:
    if form == "seconds":
        return time.time() + int(header)
    if form == "http-date":
        return email.utils.parsedate_to_datetime(header).timestamp()
    return int(header) / 1000


@pytest.mark.anyio
@pytest.mark.parametrize("form", ["seconds", "http-date", "unix-ms"])
async def test_rate_limit_fault_sends_retry_after_in_each_form(form: Any) -> None:
    faults = Faults(rate_limit_rate=1.0, retry_after=form, retry_after_seconds=30)
    provider = FakeProvider(faults=faults)
    async with _client(provider) as client:
        response = await client.post("/track/lead", json=LEAD)

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    # Whole seconds in two of the forms, so allow a little over a second either way.
    assert abs(_retry_at(form, response.headers["retry-after"]) - (time.time() + 30)) < 1.5
    assert provider.requests == []


@pytest.mark.anyio
async def test_rate_limit_without_retry_after() -> None:
    provider = FakeProvider(faults=Faults(rate_limit_rate=1.0, retry_after=None))
    async with _client(provider) as client:
        response = await client.post("/track/lead", json=LEAD)
    assert response.status_code == 429
    assert "retry-after" not in response.headers


@pytest.mark.anyio
async def test_slow_answer_is_recorded_before_it_is_answered() -> None:
    provider = FakeProvider(faults=Faults(slow_rate=1.0, slow_seconds=0.2))
    finished: list[str] = []

    async with _client(provider) as client, anyio.create_task_group() as tg:

        async def post(name: str, body: dict[str, Any]) -> None:
            response = await client.post("/track/lead", json=body)
            assert response.status_code == 200
            finished.append(name)

        tg.start_soon(post, "slow", LEAD)
        with anyio.fail_after(5):
            while not provider.accepted:
                await anyio.sleep(0.001)
        provider.faults = Faults()
        await post("fast", {**LEAD, "eventName": "Trial"})

    assert finished == ["fast", "slow"]
    assert [lead["eventName"] for lead in provider.leads()] == ["Sign up", "Trial"]


def test_slow_answer_times_out_the_client_yet_the_event_landed() -> None:
    provider = FakeProvider(faults=Faults(slow_rate=1.0, slow_seconds=0.5))
    with serve_in_thread(provider) as base_url, httpx.Client(base_url=base_url) as client:
        with pytest.raises(httpx.TimeoutException):
            client.post("/track/lead", json=LEAD, headers=AUTH, timeout=0.05)
        deadline = time.monotonic() + 5
        while not provider.accepted and time.monotonic() < deadline:
            time.sleep(0.01)
    assert provider.leads() == [LEAD]


def test_drop_is_a_transport_error_over_a_socket_and_records_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = FakeProvider(faults=Faults(drop_rate=1.0))
    with (
        caplog.at_level(logging.ERROR),
        serve_in_thread(provider) as base_url,
        httpx.Client(base_url=base_url, headers=AUTH) as client,
    ):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.post("/track/lead", json=LEAD)
        assert provider.requests == provider.accepted == []
        # The server survives the drop and keeps serving.
        assert client.put("/_fake/faults", json={}).status_code == 200
        assert client.post("/track/lead", json=LEAD).status_code == 200

    assert provider.leads() == [LEAD]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.anyio
async def test_drop_in_process_raises_connection_dropped() -> None:
    provider = FakeProvider(faults=Faults(drop_rate=1.0))
    async with _client(provider) as client:
        with pytest.raises(ConnectionDropped):
            await client.post("/track/lead", json=LEAD)
    assert provider.requests == []


@pytest.mark.anyio
async def test_fail_first_is_deterministic() -> None:
    provider = FakeProvider(faults=Faults(fail_first=2))
    # With a click id, Dub makes the customer from the click (direct sale tracking).
    direct = {**SALE, "clickId": "clk_1"}
    async with _client(provider) as client:
        statuses = [(await client.post("/track/sale", json=direct)).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert [r.status for r in provider.requests] == [200, 200]
    assert provider.sales() == [direct]


async def _statuses(provider: FakeProvider, n: int = 40) -> list[int]:
    async with _client(provider) as client:
        return [(await client.post("/track/lead", json=LEAD)).status_code for _ in range(n)]


@pytest.mark.anyio
async def test_seeded_faults_replay_exactly() -> None:
    def faults(seed: int) -> Faults:
        return Faults(error_rate=0.3, rate_limit_rate=0.3, seed=seed)

    provider = FakeProvider(faults=faults(1))
    first = await _statuses(provider)
    provider.reset()
    after_reset = await _statuses(provider)
    same_seed = await _statuses(FakeProvider(faults=faults(1)))
    other_seed = await _statuses(FakeProvider(faults=faults(2)))

    assert {200, 429, 503} <= set(first)
    assert first == after_reset == same_seed
    assert first != other_seed


def test_faults_reject_impossible_settings() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        Faults(error_rate=0.6, drop_rate=0.6)
    with pytest.raises(ValueError, match="fail_first"):
        Faults(fail_first=-1)


# -- control endpoints ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_control_endpoints(dub: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    provider, client = dub
    await client.post("/track/lead", json=LEAD, headers={"Idempotency-Key": "k1"})
    await client.post("/track/lead", json={})

    events = (await client.get("/_fake/events")).json()
    assert [e["body"] for e in events["accepted"]] == [LEAD]
    assert [e["status"] for e in events["requests"]] == [200, 422]
    assert events["accepted"][0]["idempotency_key"] == "k1"
    assert events["accepted"][0]["headers"]["authorization"] == "Bearer ***"

    put = await client.put("/_fake/faults", json={"error_rate": 1.0, "seed": 3})
    assert put.status_code == 200
    assert provider.faults == Faults(error_rate=1.0, seed=3)
    assert (await client.post("/track/lead", json=LEAD)).status_code == 503
    assert (await client.get("/_fake/events")).status_code == 200  # never faulted

    bad_field = await client.put("/_fake/faults", json={"errors": 1})
    assert bad_field.status_code == 422
    assert bad_field.json()["error"]["message"].startswith("errors:")
    out_of_range = await client.put("/_fake/faults", json={"drop_rate": 2})
    assert out_of_range.status_code == 422
    assert "drop_rate" in out_of_range.json()["error"]["message"]
    assert (await client.put("/_fake/faults", content=b"{")).status_code == 400
    assert provider.faults == Faults(error_rate=1.0, seed=3)

    assert (await client.post("/_fake/reset")).status_code == 200
    assert (await client.get("/_fake/events")).json() == {
        "accepted": [],
        "requests": [],
        "faulted": [],
    }
    assert provider.faults.error_rate == 1.0  # reset forgets events, not faults

    assert (await client.put("/_fake/faults", json={})).status_code == 200
    assert (await client.post("/track/lead", json=LEAD)).status_code == 200


def test_control_endpoints_over_a_socket() -> None:
    provider = FakeProvider("pimms")
    with serve_in_thread(provider) as base_url, httpx.Client(base_url=base_url) as client:
        assert base_url.startswith("http://127.0.0.1:")
        client.put("/_fake/faults", json={"fail_first": 1})
        assert client.post("/track/sale", json=SALE, headers=AUTH).status_code == 503
        events = client.get("/_fake/events").json()
        assert (events["accepted"], events["requests"]) == ([], [])
        [faulted] = events["faulted"]  # the injected 503, listed with its status
        assert (faulted["path"], faulted["fault"], faulted["status"]) == (
            "/track/sale",
            "error",
            503,
        )
        assert provider.faults.fail_first == 1
    # Shut down: nothing listens there any more.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/_fake/events")
