"""Touchpoints (issue 30, item 1) through a real FastAPI app under uvicorn and the fake provider.

A visitor (an httpx client keeping its cookies, sending the headers a browser sends on a
navigation) lands with UTM tags and ad click ids; the ``attribution_touch`` cookie keeps the
first touch and the last; the signup's lead reaches the fake provider over a socket carrying
both in its metadata. Bad input (tampered cookies, giant values, unknown parameters, requests
that are no navigation, visitors without consent) records and reads nothing, and never costs
a lead.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request

from asgi_attribution import (
    AttributionMiddleware,
    MemoryTransport,
    Touch,
    Tracker,
    get_attribution,
    track_lead,
)
from asgi_attribution.testing import FakeProvider, serve_in_thread

from .support.asgi import KEY

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
SECRET = "touch-test-secret-0123456789"
TOUCH = "attribution_touch"


def touches(request: Request) -> dict[str, Any]:
    points = get_attribution(request).touchpoints
    return {
        "click_id": get_attribution(request).click_id,
        "first": None if points.first is None else points.first.as_dict(),
        "last": None if points.last is None else points.last.as_dict(),
    }


def touch_app(tracker: Tracker, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    @app.get("/pricing")
    @app.post("/")
    async def show(request: Request) -> dict[str, Any]:
        return touches(request)

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {"ok": "yes"}  # never asks for the touchpoints

    @app.post("/signup")
    async def signup(request: Request) -> dict[str, Any]:
        body = await request.json()
        result = await track_lead(
            request,
            "Sign up",
            customer_external_id=body["user"],
            metadata=body.get("metadata"),
        )
        return {"event_id": result.event.event_id if result.event else None}

    app.add_middleware(AttributionMiddleware, tracker=tracker, touchpoints=True, **options)
    return app


class Tally:
    """What the tracker reported as dropped, by event id (on_drop and its log line)."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def on_drop(self, delivery: Any, reason: str) -> None:
        self.dropped.append(delivery.event.event_id)


@pytest.fixture
def site(provider: FakeProvider, url: str) -> Iterator[Callable[..., tuple[httpx.Client, Tally]]]:
    """``site(**middleware_options)``: the app under uvicorn, and a visitor's client."""
    stack: list[Any] = []

    def start(**options: Any) -> tuple[httpx.Client, Tally]:
        tally = Tally()
        tracker = Tracker(
            "dub",
            api_key=KEY,
            base_url=url,
            touchpoints_metadata_key="touchpoints",
            on_drop=tally.on_drop,
        )
        server = serve_in_thread(touch_app(tracker, **options))
        base = server.__enter__()
        stack.append(server)
        client = httpx.Client(base_url=base, timeout=30)
        stack.append(client)
        return client, tally

    try:
        yield start
    finally:
        for item in reversed(stack):
            if isinstance(item, httpx.Client):
                item.close()
            else:
                item.__exit__(None, None, None)  # drains the tracker


def set_cookies(response: httpx.Response, name: str = TOUCH) -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith(name + "=")]


def unsigned(data: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


# -- landing, later landing, the lead -------------------------------------------------------------


def test_a_landing_with_utm_tags_and_a_gclid_sets_the_touch_cookie(site: Any) -> None:
    client, _ = site(signing_secrets=SECRET)
    response = client.get(
        "/pricing?utm_source=newsletter&utm_medium=email&utm_campaign=spring&gclid=Gc1&x=1",
        headers={**NAVIGATE, "Referer": "https://mail.google.com/mail/u/0/"},
    )
    assert response.status_code == 200
    [header] = set_cookies(response)
    attributes = header.split("; ")[1:]
    assert attributes == ["Max-Age=7776000", "Path=/", "SameSite=Lax", "HttpOnly"]
    assert len(header.split(";")[0]) <= 1500
    body = response.json()
    assert body["first"] == body["last"]
    touch = body["first"]
    assert touch.pop("time") > 1_700_000_000
    assert touch == {
        "path": "/pricing",
        "referrer": "mail.google.com",
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "spring",
        "gclid": "Gc1",
    }
    # The next request reads the cookie back (no landing: no new cookie).
    again = client.get("/", headers=NAVIGATE)
    assert set_cookies(again) == []
    assert again.json()["first"]["gclid"] == "Gc1"


def test_a_later_landing_updates_last_keeps_first_and_the_lead_carries_both(
    site: Any, provider: FakeProvider
) -> None:
    client, tally = site()
    client.get("/?utm_source=google&utm_medium=cpc&gclid=G1", headers=NAVIGATE)
    second = client.get(
        "/pricing?dub_id=clkTouch2&utm_source=partner",
        headers={**NAVIGATE, "Referer": "https://dub.sh/x"},
    )
    body = second.json()
    assert body["click_id"] == "clkTouch2"
    assert body["first"]["gclid"] == "G1" and body["first"]["utm_medium"] == "cpc"
    assert body["last"]["click_id"] == "clkTouch2"
    assert body["last"]["utm_source"] == "partner" and body["last"]["referrer"] == "dub.sh"
    assert "gclid" not in body["last"]

    event_id = client.post("/signup", json={"user": "user_touch"}).json()["event_id"]
    leads = _wait_for_leads(provider, 1)
    metadata = leads[0]["metadata"]["touchpoints"]
    assert metadata["first"]["gclid"] == "G1"
    assert metadata["last"]["click_id"] == "clkTouch2"
    assert leads[0]["clickId"] == "clkTouch2"
    assert provider.count_by_idempotency_key() == {event_id: 1}
    assert tally.dropped == []


def _wait_for_leads(provider: FakeProvider, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while len(provider.leads()) < n:
        assert time.monotonic() < deadline, f"only {len(provider.leads())} of {n} leads arrived"
        time.sleep(0.02)
    return provider.leads()


def test_the_referrer_is_kept_only_when_it_is_another_site(site: Any) -> None:
    client, _ = site()
    host = client.base_url.host
    for referrer, kept in (
        (f"http://{host}/blog", None),
        ("https://news.ycombinator.com/item?id=1", "news.ycombinator.com"),
        ("not a url at all", None),
    ):
        response = client.get("/?utm_source=x", headers={**NAVIGATE, "Referer": referrer})
        assert response.json()["last"].get("referrer") == kept, referrer


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cookie",
    [
        "garbage!!",
        unsigned([1, 2]),
        unsigned({"f": {"time": "now", "path": "/"}}),
        unsigned({"f": {"time": 1}}),
        "a" * 5000,
        "",
    ],
    ids=["garbage", "list", "bad-time", "no-path", "huge", "empty"],
)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_a_bad_cookie_is_ignored_as_absent(
    site: Any, cookie: str, signed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"signing_secrets": SECRET} if signed else {}
    client, _ = site(**options)
    _ignored_as_absent(client, cookie, caplog)


def test_a_tampered_signed_cookie_is_ignored_as_absent(
    site: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = site(signing_secrets=SECRET)
    # A real signed cookie with its payload changed (a visitor editing their first touch).
    good = client.get("/?utm_source=real", headers=NAVIGATE)
    value = set_cookies(good)[0].split(";")[0].split("=", 1)[1]
    signature = value.split(".", 1)[1]
    forged = unsigned({"f": {"time": 1, "path": "/", "utm_source": "forged"}})
    client.cookies.clear()
    _ignored_as_absent(client, forged + "." + signature, caplog)


def _ignored_as_absent(client: httpx.Client, cookie: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="asgi_attribution"):
        response = client.get("/", headers={**NAVIGATE, "Cookie": f"{TOUCH}={cookie}"})
        assert response.status_code == 200
        assert response.json()["first"] is None and response.json()["last"] is None
        # A landing over a bad cookie starts afresh: its touch is the first.
        landing = client.get(
            "/?utm_source=fresh", headers={**NAVIGATE, "Cookie": f"{TOUCH}={cookie}"}
        )
    assert landing.json()["first"]["utm_source"] == "fresh"
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


def test_a_signed_cookie_from_another_secret_is_ignored(site: Any) -> None:
    first, _ = site(signing_secrets="another-secret")
    value = set_cookies(first.get("/?utm_source=a", headers=NAVIGATE))[0].split(";")[0]
    second, _ = site(signing_secrets=SECRET)
    response = second.get("/", headers={**NAVIGATE, "Cookie": value})
    assert response.json()["first"] is None


def test_oversized_values_are_cut_and_unknown_params_dropped(site: Any) -> None:
    client, _ = site(signing_secrets=SECRET)
    params = "&".join(f"{name}={name[0] * 5000}" for name in _PARAMS)
    response = client.get(f"/?{params}&evil=1&utm_source2=x&dub_id=clkBig1", headers=NAVIGATE)
    [header] = set_cookies(response)
    assert len(header.split(";")[0]) <= 1500
    touch = response.json()["first"]
    assert "evil" not in touch and "utm_source2" not in touch
    assert touch["click_id"] == "clkBig1"
    for name in _PARAMS:
        assert 1 <= len(touch[name]) <= 100, name
    # A later landing as large: still within the cookie's budget, first and last both kept.
    later = client.get(f"/pricing?{params}", headers=NAVIGATE)
    [header] = set_cookies(later)
    assert len(header.split(";")[0]) <= 1500
    assert later.json()["first"]["click_id"] == "clkBig1"
    assert later.json()["last"]["path"] == "/pricing"


_PARAMS = [
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "ttclid",
    "msclkid",
    "li_fat_id",
    "twclid",
]


@pytest.mark.parametrize(
    ("options", "headers"),
    [
        ({"honor_gpc": True}, {"Sec-GPC": "1"}),
        ({"consent": lambda request: request.cookies.get("consent") == "yes"}, {}),
    ],
    ids=["gpc", "consent"],
)
def test_consent_and_gpc_gate_touchpoints(site: Any, options: Any, headers: Any) -> None:
    client, _ = site(**options)
    refused = client.get("/?utm_source=x&gclid=g", headers={**NAVIGATE, **headers})
    assert set_cookies(refused) == []
    assert refused.json()["first"] is None
    # A touch cookie kept earlier is not read either without consent.
    kept = unsigned({"f": {"time": 1, "path": "/", "utm_source": "old"}})
    stale = client.get("/", headers={**NAVIGATE, **headers, "Cookie": f"{TOUCH}={kept}"})
    assert stale.json()["first"] is None
    # With consent, both work.
    allowed = {"Cookie": f"consent=yes; {TOUCH}={kept}"}
    landed = client.get("/?utm_source=new", headers={**NAVIGATE, **allowed})
    assert set_cookies(landed)
    assert landed.json()["first"]["utm_source"] == "old"
    assert landed.json()["last"]["utm_source"] == "new"


@pytest.mark.parametrize(
    ("method", "headers", "query"),
    [
        ("POST", NAVIGATE, "utm_source=x"),
        ("HEAD", NAVIGATE, "utm_source=x"),
        ("GET", {"Sec-Fetch-Mode": "cors"}, "utm_source=x"),
        ("GET", {"Sec-Fetch-Mode": "no-cors"}, "gclid=g"),
        ("GET", {"Sec-Fetch-Mode": "same-origin"}, "fbclid=f"),
        ("GET", NAVIGATE, "utm_source=x&dub-no-track"),
        ("GET", NAVIGATE, "evil=1&utm_sourcex=2"),
        ("GET", NAVIGATE, "utm_source="),
    ],
    ids=["post", "head", "cors", "no-cors", "same-origin", "no-track", "unknown", "blank"],
)
def test_requests_that_are_no_navigation_landing_record_nothing(
    site: Any, method: str, headers: dict[str, str], query: str
) -> None:
    client, _ = site()
    response = client.request(method, f"/?{query}", headers=headers)
    assert set_cookies(response) == []
    if method == "GET" or method == "POST":
        assert response.json()["first"] is None


def test_a_request_that_never_asks_does_not_parse_the_cookie(
    site: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = site()
    with caplog.at_level(logging.DEBUG, logger="asgi_attribution"):
        client.get("/plain", headers={**NAVIGATE, "Cookie": f"{TOUCH}=not-base64!"})
        assert not [r for r in caplog.records if "touch cookie" in r.getMessage()]
        client.get("/", headers={**NAVIGATE, "Cookie": f"{TOUCH}=not-base64!"})
    assert [r for r in caplog.records if "touch cookie" in r.getMessage()]


def test_touchpoints_are_off_by_default() -> None:
    import asyncio

    from tests.support.asgi import client_for, make_app

    async def run() -> httpx.Response:
        async with client_for(make_app()) as client:
            return await client.get("/?utm_source=x&gclid=g", headers=NAVIGATE)

    response = asyncio.run(run())
    assert set_cookies(response) == []
    with pytest.raises(TypeError, match=r"AttributionMiddleware\(touchpoints=...\)"):
        AttributionMiddleware(
            touch_app, tracker=Tracker("dub", transport=MemoryTransport()), touchpoints="yes"
        )  # type: ignore[arg-type]


# -- the metadata limit ----------------------------------------------------------------------------


def test_the_metadata_limit_is_respected_with_a_warning(
    site: Any, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    client, tally = site()
    first = "&".join(f"{n}={n[0] * 100}" for n in _PARAMS)
    client.get(f"/?dub_id=clkMeta1&{first}", headers=NAVIGATE)
    client.get("/pricing?" + "&".join(f"{n}={n[-1] * 100}" for n in _PARAMS), headers=NAVIGATE)
    sent = []
    with caplog.at_level(logging.WARNING, logger="asgi_attribution"):
        # Room for both touches; room for the last only; room for none; the caller's own key.
        for i, size in enumerate(_room_for(client.get("/").json())):
            metadata = {"note": "n" * size}
            sent.append(client.post("/signup", json={"user": f"u{i}", "metadata": metadata}))
        own = {"touchpoints": "mine"}
        sent.append(client.post("/signup", json={"user": "u3", "metadata": own}))
    ids = [r.json()["event_id"] for r in sent]
    leads = {lead["customerExternalId"]: lead for lead in _wait_for_leads(provider, 4)}
    assert set(leads["u0"]["metadata"]["touchpoints"]) == {"first", "last"}
    assert set(leads["u1"]["metadata"]["touchpoints"]) == {"last"}
    assert "touchpoints" not in leads["u2"]["metadata"]
    assert leads["u3"]["metadata"] == {"touchpoints": "mine"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("first touch left out" in w for w in warnings)
    assert any("touchpoints left out" in w for w in warnings)
    assert provider.count_by_idempotency_key() == dict.fromkeys(ids, 1)
    assert tally.dropped == []


def _room_for(touches: dict[str, Any]) -> tuple[int, int, int]:
    """Sizes of a ``note`` that leave, within the 10,000 characters, room for both touches,
    for the last touch only, and for none."""

    def size(metadata: dict[str, Any]) -> int:
        return len(json.dumps(metadata, separators=(",", ":")))

    both = {"first": touches["first"], "last": touches["last"]}
    last = {"last": touches["last"]}
    return (
        10_000 - size({"note": "", "touchpoints": both}),
        10_000 - size({"note": "", "touchpoints": last}),
        10_000 - size({"note": ""}) - 5,
    )


# -- attack: hostile touches never cost a lead -----------------------------------------------------


def test_hostile_touch_input_never_costs_a_lead(
    site: Any, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Sent signups after hostile landings and cookies; each must be delivered or reported."""
    hostile: list[tuple[str, dict[str, str]]] = [
        ("/?" + "&".join(f"{n}={'é' * 600}" for n in _PARAMS), NAVIGATE),
        ("/?utm_source=%00%0d%0aSet-Cookie:%20x=1", NAVIGATE),
        ("/?utm_source=x", {**NAVIGATE, "Cookie": f"{TOUCH}={'A' * 4000}"}),
        ("/?utm_source=x", {**NAVIGATE, "Cookie": f"{TOUCH}=eyJmIjpbXX0"}),
        ("/?gclid=" + "%ff" * 500, NAVIGATE),
        ("/?utm_source=x", {"Sec-Fetch-Mode": "cors"}),
        ("/?utm_source=x", {**NAVIGATE, "Referer": "http://[::1"}),
        ("/?utm_source=x", {**NAVIGATE, "Referer": "https://" + "a" * 3000 + ".com/"}),
    ]
    ids: list[str] = []
    # One app for all visitors (a fresh client each, as separate browsers).
    client, tally = site(signing_secrets=SECRET)
    with caplog.at_level(logging.WARNING, logger="asgi_attribution"):
        for round_ in range(3):
            for i, (path, headers) in enumerate(hostile):
                visitor = httpx.Client(base_url=client.base_url, timeout=30)
                click = f"clkHostile_{round_}_{i}"
                try:
                    # The partner's click first, then the hostile request, then the signup.
                    assert visitor.get(f"/?dub_id={click}", headers=NAVIGATE).status_code == 200
                    if "Cookie" in headers:
                        headers = {**headers, "Cookie": f"{headers['Cookie']}; dub_id={click}"}
                    landing = visitor.get(path, headers=headers)
                    assert landing.status_code == 200, (path, landing.text[:200])
                    for header in set_cookies(landing):
                        assert len(header.split(";")[0]) <= 1500
                    answer = visitor.post(
                        "/signup", json={"user": f"hostile_{round_}_{i}", "metadata": {"r": i}}
                    )
                    assert answer.status_code == 200
                    ids.append(answer.json()["event_id"])
                finally:
                    visitor.close()
    sent = len(ids)
    deadline = time.monotonic() + 30
    while True:
        counts = provider.count_by_idempotency_key()
        delivered = sum(1 for i in ids if counts.get(i))
        reported = sum(1 for i in ids if i in tally.dropped)
        if delivered + reported >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    duplicates = sum(max(0, counts.get(i, 0) - 1) for i in ids)
    lost = sent - delivered - reported
    print(f"\nsent={sent} delivered={delivered} dup={duplicates} reported={reported} lost={lost}")
    assert sent == 3 * len(hostile)
    assert lost == 0
    assert duplicates == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_touch_is_a_documented_public_name() -> None:
    touch = Touch(time=1, path="/", gclid="g")
    assert Touch.from_dict(touch.as_dict()) == touch


def test_clear_attribution_deletes_the_touch_cookie_once_the_lead_is_accepted(
    provider: FakeProvider, url: str
) -> None:
    from fastapi.responses import JSONResponse

    from asgi_attribution import clear_attribution

    tracker = Tracker("dub", api_key=KEY, base_url=url, background=False)
    app = touch_app(tracker)

    @app.post("/signup-and-clear")
    async def signup_and_clear(request: Request) -> JSONResponse:
        result = await track_lead(request, "Sign up", customer_external_id="user_clear")
        response = JSONResponse({"status": result.status})
        clear_attribution(request, response, result)
        return response

    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        client.get("/?dub_id=clkClear1&utm_source=x", headers=NAVIGATE)
        assert client.cookies.get(TOUCH)
        answer = client.post("/signup-and-clear")
        assert answer.json() == {"status": "sent"}
        assert any(c.startswith(f'{TOUCH}=""; Max-Age=0') for c in set_cookies(answer))
        assert client.cookies.get(TOUCH) is None
    assert [lead["clickId"] for lead in provider.leads()] == ["clkClear1"]
