"""Tracking through real ASGI requests: helpers, validation, dialects, decorator, capture."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from asgi_attribution import (
    DUB,
    PIMMS,
    AttributionMiddleware,
    CustomerEvent,
    InvalidEventError,
    LeadEvent,
    MemoryTransport,
    SaleEvent,
    Tracker,
    TrackResult,
    track_customer,
    track_lead,
    track_sale,
    tracks_lead,
)
from asgi_attribution._providers import ProviderRequest
from asgi_attribution.testing import CapturedEvents, capture_events
from asgi_attribution.transports._base import Delivery
from asgi_attribution.transports.outbox import OutboxRow
from tests.support.asgi import client_for

pytestmark = pytest.mark.anyio


def tracking_app(tracker: Tracker, **lead_kwargs: Any) -> Starlette:
    async def signup(request: Request) -> Response:
        form = await request.json()
        try:
            result = await track_lead(request, "Sign up", **form, **lead_kwargs)
        except InvalidEventError as exc:
            return JSONResponse({"error": str(exc), "fields": exc.fields}, status_code=400)
        return JSONResponse({"status": result.status, "reason": result.reason})

    async def sale(request: Request) -> Response:
        result = await track_sale(request, **await request.json())
        return JSONResponse({"status": result.status})

    async def customer(request: Request) -> Response:
        result = await track_customer(request, **await request.json())
        return JSONResponse({"status": result.status})

    app = Starlette(
        routes=[
            Route("/signup", signup, methods=["POST"]),
            Route("/sale", sale, methods=["POST"]),
            Route("/customer", customer, methods=["POST"]),
        ]
    )
    return AttributionMiddleware(app, tracker)  # type: ignore[return-value]


async def test_track_lead_fills_in_the_click_id_from_the_cookie() -> None:
    transport = MemoryTransport()
    app = tracking_app(Tracker("dub", transport=transport))
    async with client_for(app) as client:
        response = await client.post(
            "/signup",
            json={"customer_external_id": "u1", "customer_email": "ada@example.com"},
            headers={"cookie": "dub_id=clk1"},
        )
    assert response.json() == {"status": "sent", "reason": None}
    [event] = transport.events
    assert isinstance(event, LeadEvent)
    assert (event.click_id, event.event_name, event.customer_external_id) == (
        "clk1",
        "Sign up",
        "u1",
    )
    assert transport.requests[0].json == {
        "clickId": "clk1",
        "eventName": "Sign up",
        "customerExternalId": "u1",
        "customerEmail": "ada@example.com",
    }


async def test_landing_request_itself_can_track_with_the_query_click() -> None:
    transport = MemoryTransport()
    app = tracking_app(Tracker("dub", transport=transport))
    async with client_for(app) as client:
        await client.post("/signup?dub_id=fromurl", json={"customer_external_id": "u1"})
    assert transport.events[0].click_id == "fromurl"  # type: ignore[union-attr]


async def test_organic_signup_is_skipped_not_an_error() -> None:
    transport = MemoryTransport()
    app = tracking_app(Tracker("dub", transport=transport))
    async with client_for(app) as client:
        response = await client.post("/signup", json={"customer_external_id": "u1"})
    assert response.json() == {"status": "skipped", "reason": "no click id (organic visit)"}
    assert transport.events == []


async def test_organic_signup_raises_when_click_id_is_required() -> None:
    transport = MemoryTransport()
    app = tracking_app(Tracker("dub", transport=transport, require_click_id=True))
    async with client_for(app) as client:
        response = await client.post("/signup", json={"customer_external_id": "u1"})
    assert response.status_code == 400
    assert response.json()["fields"] == ["click_id"]
    assert transport.events == []


async def test_organic_signup_with_bad_fields_still_raises() -> None:
    transport = MemoryTransport()
    app = tracking_app(Tracker("dub", transport=transport))
    async with client_for(app) as client:
        response = await client.post("/signup", json={"customer_external_id": ""})
    assert response.status_code == 400
    assert response.json()["fields"] == ["customer_external_id"]


BAD_LEADS = [
    ({"customer_external_id": "x" * 101}, "customer_external_id", "at most 100"),
    ({"customer_external_id": "u", "event_quantity": 0}, "event_quantity", "greater than"),
    ({"customer_external_id": "u", "event_quantity": 101}, "event_quantity", "less than"),
    ({"customer_external_id": "u", "event_quantity": 1.5}, "event_quantity", "integer"),
    ({"customer_external_id": "u", "mode": "later"}, "mode", "async"),
    (
        {"customer_external_id": "u", "metadata": {"k": "v" * 10_000}},
        "metadata",
        "at most 10,000 characters",
    ),
    (
        {"customer_external_id": "u", "external_id": "v"},
        "customer_external_id and external_id",
        "once",
    ),
]


@pytest.mark.parametrize(("fields", "field", "limit"), BAD_LEADS)
async def test_invalid_lead_fields_raise_naming_the_field(
    fields: dict[str, Any], field: str, limit: str
) -> None:
    transport = MemoryTransport()
    app = tracking_app(Tracker("dub", transport=transport))
    async with client_for(app) as client:
        response = await client.post("/signup", json=fields, headers={"cookie": "dub_id=clk1"})
    assert response.status_code == 400
    assert response.json()["fields"] == [field]
    assert limit in response.json()["error"]
    assert transport.events == []


class Ambiguous:
    """As ``pandas.NA``: ``==`` answers itself, whose truth raises (a missing DataFrame cell)."""

    def __eq__(self, other: object) -> Any:
        return self

    def __bool__(self) -> bool:
        raise TypeError("boolean value of NA is ambiguous")

    __hash__ = None  # type: ignore[assignment]


VISITOR_TYPED = [
    ({"customer_name": "n" * 101}, "customer_name", "at most 100"),
    ({"customer_name": Ambiguous()}, "customer_name", "valid string"),
    ({"customer_email": "not-an-email"}, "customer_email", "email"),
    ({"customer_email": "a" * 95 + "@ex.com"}, "customer_email", "at most 100"),
    ({"customer_avatar": "avatar.png"}, "customer_avatar", "URL"),
]


@pytest.mark.parametrize(("fields", "field", "limit"), VISITOR_TYPED)
async def test_visitor_typed_fields_that_break_a_limit_are_dropped_not_fatal(
    fields: dict[str, Any], field: str, limit: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = MemoryTransport()
    tracker = Tracker("dub", transport=transport)
    result = await tracker.track_lead(
        click_id="clk1", event_name="Sign up", customer_external_id="u", **fields
    )
    assert result.status == "sent"
    (warning,) = result.warnings
    assert warning.startswith(f"{field}: ") and limit in warning
    assert getattr(transport.events[0], field) is None
    assert f"lead {result.event_id} sent without what broke a limit" in caplog.text


async def test_a_value_whose_comparison_raises_is_a_named_invalid_field() -> None:
    tracker = Tracker("dub", transport=MemoryTransport())
    with pytest.raises(InvalidEventError) as raised:
        await tracker.track_lead(
            click_id="c", event_name="Sign up", customer_external_id="u", metadata=Ambiguous()
        )
    assert raised.value.fields == ["metadata"]


async def test_event_name_limits() -> None:
    tracker = Tracker("dub", transport=MemoryTransport())
    for name in ("", "x" * 256):
        with pytest.raises(InvalidEventError, match="event_name"):
            await tracker.track_lead(click_id="c", event_name=name, customer_external_id="u")
    result = await tracker.track_lead(click_id="c", event_name="x" * 255, customer_external_id="u")
    assert result.status == "sent"


async def test_legacy_external_id_names_are_accepted() -> None:
    transport = MemoryTransport()
    tracker = Tracker("dub", transport=transport)
    await tracker.track_lead(click_id="c", event_name="Sign up", external_id="a")
    await tracker.track_lead(click_id="c", event_name="Sign up", customer_id="b")
    await tracker.track_sale(external_id="c", amount=1)
    assert [r.json["customerExternalId"] for r in transport.requests] == ["a", "b", "c"]


async def test_invalid_event_error_is_a_value_error() -> None:
    tracker = Tracker("dub", transport=MemoryTransport())
    with pytest.raises(ValueError, match="amount"):
        await tracker.track_sale(customer_external_id="u", amount=-1)
    with pytest.raises(InvalidEventError, match="amount"):
        await tracker.track_sale(customer_external_id="u", amount=9.99)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="payment_processor"):
        await tracker.track_sale(customer_external_id="u", amount=1, payment_processor="visa")
    with pytest.raises(InvalidEventError, match="currency"):
        await tracker.track_sale(customer_external_id="u", amount=1, currency="dollars")
    with pytest.raises(InvalidEventError, match="metadata: must be JSON"):
        await tracker.track_lead(
            click_id="c", event_name="e", customer_external_id="u", metadata={"x": object()}
        )


async def test_track_sale_includes_the_click_for_direct_sale_tracking() -> None:
    transport = MemoryTransport()
    app = tracking_app(Tracker("dub", transport=transport))
    async with client_for(app) as client:
        await client.post(
            "/sale",
            json={"customer_external_id": "u1", "amount": 4900, "invoice_id": "in_1"},
            headers={"cookie": "dub_id=clk1"},
        )
        await client.post(
            "/sale", json={"customer_external_id": "u2", "amount": 100, "currency": "EUR"}
        )
    assert [type(e) for e in transport.events] == [SaleEvent, SaleEvent]
    assert transport.requests[0].json == {
        "customerExternalId": "u1",
        "amount": 4900,
        "currency": "usd",
        "eventName": "Purchase",
        "paymentProcessor": "custom",
        "invoiceId": "in_1",
        "clickId": "clk1",
    }
    assert "clickId" not in transport.requests[1].json
    assert transport.requests[1].json["currency"] == "eur"
    # Without an invoice id, the event id is the one Dub deduplicates a repeated delivery by.
    assert transport.requests[1].json["invoiceId"] == transport.events[1].event_id


async def test_track_customer_patches_both_providers() -> None:
    dub, pimms = MemoryTransport(), MemoryTransport()
    for tracker in (Tracker("dub", transport=dub), Tracker("pimms", transport=pimms)):
        async with client_for(tracking_app(tracker)) as client:
            await client.post("/customer", json={"customer_id": "user/42", "customer_name": "Ada"})
    assert isinstance(dub.events[0], CustomerEvent)
    assert (dub.requests[0].method, dub.requests[0].path) == ("PATCH", "/customers/ext_user%2F42")
    assert dub.requests[0].json == {"name": "Ada"}
    # PIMMS (a Dub fork) kept Dub's removal of POST /track/customer: PATCH there too.
    assert (pimms.requests[0].method, pimms.requests[0].path) == (
        "PATCH",
        "/customers/ext_user%2F42",
    )
    assert pimms.requests[0].json == {"name": "Ada"}


async def test_pimms_dialect_uses_external_id_and_refuses_deferred() -> None:
    transport = MemoryTransport()
    app = tracking_app(Tracker("pimms", transport=transport))
    async with client_for(app) as client:
        ok = await client.post(
            "/signup", json={"customer_external_id": "u1"}, headers={"cookie": "pimms_id=p1"}
        )
        deferred = await client.post(
            "/signup",
            json={"customer_external_id": "u1", "mode": "deferred"},
            headers={"cookie": "pimms_id=p1"},
        )
    assert ok.json()["status"] == "sent"
    assert transport.requests[0].json == {
        "clickId": "p1",
        "eventName": "Sign up",
        "externalId": "u1",
    }
    assert deferred.status_code == 400 and deferred.json()["fields"] == ["mode"]
    assert len(transport.events) == 1


def test_provider_render_has_no_nulls() -> None:
    event = LeadEvent(click_id="c", event_name="e", customer_external_id="u")
    assert DUB.render(event).json == {"clickId": "c", "eventName": "e", "customerExternalId": "u"}
    assert PIMMS.render(event).json == {"clickId": "c", "eventName": "e", "externalId": "u"}


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown provider 'rebrandly'"):
        Tracker("rebrandly")


def test_api_key_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUB_API_KEY", "dub_env_secret")
    tracker = Tracker("dub")
    assert "dub_env_secret" not in repr(tracker)
    assert "dub_env_secret" not in repr(tracker.transport)
    assert "dub_env_secret" not in str(vars(tracker))
    explicit = Tracker("pimms", api_key="pimms_secret")
    assert "pimms_secret" not in repr(explicit) and "'**********'" in repr(explicit)


async def test_tracker_works_outside_requests() -> None:
    transport = MemoryTransport()
    async with Tracker("dub", transport=transport) as tracker:
        await tracker.track_lead(click_id="c9", event_name="Sign up", customer_external_id="u")
        await tracker.track_customer(customer_id="u", customer_email="a@b.co")
        await tracker.flush()
    assert [type(e).__name__ for e in transport.events] == ["LeadEvent", "CustomerEvent"]


async def test_each_event_gets_a_unique_id() -> None:
    transport = MemoryTransport()
    tracker = Tracker("dub", transport=transport)
    for _ in range(50):
        await tracker.track_lead(click_id="c", event_name="e", customer_external_id="u")
    assert len({e.event_id for e in transport.events}) == 50


# -- capture_events and the pytest fixture ---------------------------------------------------


async def test_capture_events_swaps_delivery_without_touching_the_app() -> None:
    transport = MemoryTransport()  # the app's "real" transport must stay untouched
    app = tracking_app(Tracker("dub", transport=transport))
    with capture_events() as events:
        async with client_for(app) as client:
            await client.post(
                "/signup", json={"customer_external_id": "u1"}, headers={"cookie": "dub_id=c1"}
            )
    assert [e.click_id for e in events.leads] == ["c1"]
    assert len(events) == 1 and events[0].event_name == "Sign up"  # type: ignore[union-attr]
    assert transport.events == []


async def test_attribution_events_fixture(attribution_events: CapturedEvents) -> None:
    app = tracking_app(Tracker("dub"))  # a real HTTP tracker: the fixture must intercept it
    async with client_for(app) as client:
        await client.post(
            "/signup", json={"customer_external_id": "u1"}, headers={"cookie": "dub_id=c1"}
        )
        await client.post("/sale", json={"customer_external_id": "u1", "amount": 10})
    assert [e.click_id for e in attribution_events.leads] == ["c1"]
    assert [e.amount for e in attribution_events.sales] == [10]


# -- the tracks_lead decorator ---------------------------------------------------------------


def decorated_fastapi_app(tracker: Tracker) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AttributionMiddleware, tracker=tracker)

    @app.post("/async")
    @tracks_lead("Sign up", customer=lambda user, args: {"id": user["id"], "email": user["email"]})
    async def signup_async(request: FastAPIRequest, name: str) -> dict[str, str]:
        return {"id": f"user_{name}", "email": f"{name}@example.com"}

    @app.post("/sync")
    @tracks_lead("Sign up", customer=lambda user, args: user["id"], metadata={"plan": "free"})
    def signup_sync(name: str) -> dict[str, str]:
        return {"id": f"user_{name}"}

    @app.post("/fails")
    @tracks_lead("Sign up", customer=lambda user, args: "never")
    async def signup_fails(name: str) -> dict[str, str]:
        raise ValueError("database down")

    @app.post("/refused")
    @tracks_lead("Sign up", customer=lambda user, args: "never")
    async def signup_refused(name: str) -> Response:
        return PlainTextResponse("email taken", status_code=409)

    @app.post("/from-args")
    @tracks_lead("Sign up", customer=lambda result, args: {"external_id": args["name"]})
    async def signup_from_args(name: str) -> dict[str, bool]:
        return {"ok": True}

    @app.post("/bad-customer")
    @tracks_lead("Sign up", customer=lambda result, args: {"external_id": ""})
    async def signup_bad_customer(name: str) -> dict[str, bool]:
        return {"ok": True}

    return app


async def test_tracks_lead_decorator_on_fastapi_endpoints(caplog: Any) -> None:
    transport = MemoryTransport()
    app = decorated_fastapi_app(Tracker("dub", transport=transport))
    cookie = {"cookie": "dub_id=clk7"}
    async with client_for(app) as client:
        assert (await client.post("/async?name=ada", headers=cookie)).json()["id"] == "user_ada"
        assert (await client.post("/sync?name=bob", headers=cookie)).json() == {"id": "user_bob"}
        assert (await client.post("/from-args?name=cy", headers=cookie)).status_code == 200
        assert (await client.post("/refused?name=x", headers=cookie)).status_code == 409
        assert (await client.post("/async?name=organic")).status_code == 200
        with caplog.at_level(logging.ERROR, logger="asgi_attribution"):
            bad = await client.post("/bad-customer?name=x", headers=cookie)
    assert bad.status_code == 200
    assert "customer_external_id" in caplog.text
    leads = transport.events
    assert [(e.customer_external_id, e.click_id) for e in leads] == [  # type: ignore[union-attr]
        ("user_ada", "clk7"),
        ("user_bob", "clk7"),
        ("cy", "clk7"),
    ]
    assert leads[0].customer_email == "ada@example.com"  # type: ignore[union-attr]
    assert leads[1].metadata == {"plan": "free"}


async def test_tracks_lead_handler_that_raises_tracks_nothing() -> None:
    transport = MemoryTransport()
    app = decorated_fastapi_app(Tracker("dub", transport=transport))
    asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=asgi, base_url="http://t") as client:
        response = await client.post("/fails?name=x", headers={"cookie": "dub_id=c"})
    assert response.status_code == 500
    assert transport.events == []


async def test_tracks_lead_on_a_plain_starlette_endpoint() -> None:
    transport = MemoryTransport()

    @tracks_lead("Sign up", customer=lambda result, args: args["request"].query_params["u"])
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = AttributionMiddleware(
        Starlette(routes=[Route("/", endpoint, methods=["POST"])]),
        Tracker("dub", transport=transport),
    )
    async with client_for(app) as client:
        await client.post("/?u=user_9", headers={"cookie": "dub_id=c5"})
    assert [(e.customer_external_id, e.click_id) for e in transport.events] == [  # type: ignore[union-attr]
        ("user_9", "c5")
    ]


async def test_a_track_call_never_awaited_is_reported_by_event_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import gc

    transport = MemoryTransport()
    tracker = Tracker("dub", transport=transport)
    pending = tracker.track_lead(click_id="clk1", event_name="Sign up", customer_external_id="u1")
    event_id = pending.event_id
    del pending  # a forgotten `await`
    gc.collect()
    assert transport.events == []
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        f"event {event_id} was never sent: track_lead(...) was called but not awaited"
    ]


async def test_a_track_call_can_be_given_to_a_task() -> None:
    import asyncio

    transport = MemoryTransport()
    tracker = Tracker("dub", transport=transport)
    task = asyncio.create_task(
        tracker.track_lead(click_id="clk1", event_name="Sign up", customer_external_id="u1")
    )
    assert (await task).status == "sent"
    assert [e.event_id for e in transport.events] == [task.result().event_id]


@pytest.mark.parametrize("cls", [TrackResult, OutboxRow, Delivery, ProviderRequest])
def test_result_values_take_their_fields_and_replace_cleanly(cls: type[Any]) -> None:
    """The values passed along the data path: constructed by field, compared by value (a
    Delivery by identity), copied with dataclasses.replace."""
    import dataclasses
    import inspect

    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        missing = field.default is dataclasses.MISSING
        assert param.default == (inspect.Parameter.empty if missing else field.default)
    if cls is Delivery:  # compared by identity; its rendering is cached once made
        value = Delivery(LeadEvent(click_id="c", event_name="e", customer_external_id="u"), DUB)
        other = dataclasses.replace(value, provider=PIMMS)
        assert value.rendered is None and value.request() is value.request() is value.rendered
        assert other.request().json["externalId"] == "u"
        # Replaced after its first attempt rendered it: the new event's own request, not the old.
        renamed = dataclasses.replace(
            value, event=value.event.model_copy(update={"event_name": "f"})
        )
        assert renamed.rendered is None and renamed.request().json["eventName"] == "f"
        assert value.request().json["eventName"] == "e"
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.event = None
        return
    if cls is TrackResult:
        value = TrackResult("sent", None, status_code=200, outcome="recorded")
        assert value == TrackResult("sent", status_code=200, outcome="recorded")
    elif cls is ProviderRequest:
        value = ProviderRequest("GET", "/commissions", {}, (("invoiceId", "in 1"),))
        assert value.target == "/commissions?invoiceId=in+1"
    else:
        value = OutboxRow("evt_1", "dub", "lead", {"click_id": "c"}, attempts=2)
    assert value == dataclasses.replace(value)
    assert {f.name: getattr(value, f.name) for f in fields} == dataclasses.asdict(value)
    first = fields[0].name
    again = dataclasses.replace(value, **{first: "other"})
    assert getattr(again, first) == "other" and again != value and getattr(value, first) != "other"
    assert fields[1].name in repr(value)
