"""The middleware through real ASGI requests: reading, landing capture, bad input, lifespan."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from asgi_attribution import AttributionMiddleware, MemoryTransport, Tracker, get_attribution
from tests.support.asgi import client_for, make_app, raw_get, websocket_sent

pytestmark = pytest.mark.anyio


async def test_organic_request_has_no_click() -> None:
    async with client_for(make_app()) as client:
        response = await client.get("/")
    assert response.json() == {
        "click_id": None,
        "source": None,
        "captured": False,
        "partner": None,
        "discount": None,
    }
    assert "set-cookie" not in response.headers


async def test_reads_dub_cookie_among_other_cookies() -> None:
    others = "; ".join(f"c{i}=v{i}" for i in range(10))
    async with client_for(make_app()) as client:
        response = await client.get("/", headers={"cookie": f"{others}; dub_id=cm3abc_Z-9"})
    assert response.json()["click_id"] == "cm3abc_Z-9"
    assert response.json()["source"] == "cookie"
    assert "set-cookie" not in response.headers


async def test_landing_sets_cookie_with_dub_script_defaults() -> None:
    async with client_for(make_app(), base_url="http://www.example.com") as client:
        response = await client.get("/?dub_id=clk123&utm_source=x")
    assert response.json()["click_id"] == "clk123"
    assert response.json()["source"] == "query"
    assert response.json()["captured"] is True
    assert response.headers.get_list("set-cookie") == [
        "dub_id=clk123; Max-Age=7776000; Path=/; Domain=.example.com; SameSite=Lax"
    ]


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://app.example.co.uk", "Domain=.app.example.co.uk; SameSite=Lax; Secure"),
        ("http://localhost:8000", "SameSite=Lax"),
        ("http://127.0.0.1:8000", "SameSite=Lax"),
        ("http://[::1]:8000", "SameSite=Lax"),
    ],
)
async def test_cookie_domain_and_secure_follow_the_host(base_url: str, expected: str) -> None:
    async with client_for(make_app(), base_url=base_url) as client:
        response = await client.get("/?dub_id=clk123")
    assert response.headers["set-cookie"] == f"dub_id=clk123; Max-Age=7776000; Path=/; {expected}"


async def test_cookie_options_are_configurable() -> None:
    app = make_app(
        cookie_max_age=3600,
        cookie_path="/app",
        cookie_domain="example.org",
        cookie_samesite="strict",
        cookie_secure=True,
        cookie_httponly=True,
    )
    async with client_for(app) as client:
        response = await client.get("/?dub_id=clk123")
    assert response.headers["set-cookie"] == (
        "dub_id=clk123; Max-Age=3600; Path=/app; Domain=example.org; SameSite=Strict; "
        "Secure; HttpOnly"
    )


async def test_hostile_host_header_never_reaches_set_cookie() -> None:
    async with client_for(make_app()) as client:
        response = await client.get(
            "/?dub_id=clk123", headers={"host": "evil.com;Domain=other.com"}
        )
    assert response.headers["set-cookie"] == "dub_id=clk123; Max-Age=7776000; Path=/; SameSite=Lax"


async def test_cookie_is_appended_to_the_apps_own_response() -> None:
    async with client_for(make_app()) as client:
        response = await client.get("/app-cookie?dub_id=clk123")
    assert response.json() == {"ok": True}
    assert response.headers["x-app"] == "yes"
    cookies = response.headers.get_list("set-cookie")
    assert cookies[0].startswith("session=s1;") and "HttpOnly" in cookies[0]
    assert cookies[1].startswith("dub_id=clk123;")


async def test_last_click_replaces_existing_cookie() -> None:
    async with client_for(make_app()) as client:
        response = await client.get("/?dub_id=second", headers={"cookie": "dub_id=first"})
    assert response.json()["click_id"] == "second"
    assert response.headers["set-cookie"].startswith("dub_id=second;")


async def test_first_click_keeps_existing_cookie() -> None:
    async with client_for(make_app(attribution_model="first-click")) as client:
        kept = await client.get("/?dub_id=second", headers={"cookie": "dub_id=first"})
        fresh = await client.get("/?dub_id=second")
    assert kept.json()["click_id"] == "first"
    assert "set-cookie" not in kept.headers
    assert fresh.json()["click_id"] == "second"
    assert fresh.headers["set-cookie"].startswith("dub_id=second;")


async def test_first_click_replaces_an_invalid_cookie() -> None:
    async with client_for(make_app(attribution_model="first-click")) as client:
        response = await client.get("/?dub_id=good", headers={"cookie": "dub_id=bad value!"})
    assert response.json()["click_id"] == "good"


def test_unknown_attribution_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="attribution_model"):
        AttributionMiddleware(make_app(), attribution_model="linear")  # type: ignore[arg-type]


@pytest.mark.parametrize("flag", ["dub-no-track", "dub-no-track=1", "dub-no-track=true"])
async def test_no_track_parameter_is_respected(flag: str) -> None:
    async with client_for(make_app()) as client:
        response = await client.get(f"/?dub_id=clk123&{flag}", headers={"cookie": "dub_id=old"})
    assert response.json()["click_id"] == "old"
    assert "set-cookie" not in response.headers


async def test_first_query_value_wins_like_the_providers_scripts() -> None:
    async with client_for(make_app()) as client:
        response = await client.get("/?dub_id=one&dub_id=two")
    assert response.json()["click_id"] == "one"


MALFORMED = [
    "",
    "a b",
    "abc;Path=/evil",
    "abc\r\nSet-Cookie: x=y",
    "x" * 65,
    "caf\u00e9",
    "../../etc",
    '"quoted"',
    "%00abc",
]


@pytest.mark.parametrize("value", MALFORMED)
async def test_malformed_query_value_is_ignored(value: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="asgi_attribution")
    async with client_for(make_app()) as client:
        response = await client.get("/?dub_id=" + quote(value, safe=""))
    assert response.status_code == 200
    assert response.json()["click_id"] is None
    assert "set-cookie" not in response.headers
    if value:
        assert any("malformed click id" in r.getMessage() for r in caplog.records)


# In a Cookie header ';' separates cookies and '"' quotes a value; CR/LF and non-Latin-1
# cannot be sent at all.
@pytest.mark.parametrize("value", [v for v in MALFORMED if not set(v) & set(';"\r\u00e9')])
async def test_malformed_cookie_value_is_ignored(value: str) -> None:
    async with client_for(make_app()) as client:
        response = await client.get("/", headers={"cookie": f"dub_id={value}"})
    assert response.status_code == 200
    assert response.json()["click_id"] is None


async def test_non_utf8_bytes_never_fail_a_request() -> None:
    app = make_app()
    for headers, query in [
        ([(b"cookie", b"dub_id=\xff\xfe\x00")], b""),
        ([(b"host", b"\xff\xfe")], b"dub_id=\xff\xfe"),
        ([(b"cookie", b"\x80dub_id=a")], b"dub_id=%ff%fe"),
    ]:
        status, _ = await raw_get(app, headers, query)
        assert status == 200


async def test_pimms_reads_its_cookie_then_the_legacy_dclid() -> None:
    app = make_app(Tracker("pimms", transport=MemoryTransport()))
    async with client_for(app) as client:
        both = await client.get("/", headers={"cookie": "dclid=legacy; pimms_id=current"})
        legacy = await client.get("/", headers={"cookie": "dclid=legacy"})
        dub = await client.get("/", headers={"cookie": "dub_id=other"})
        landing = await client.get("/?pimms_id=fresh")
        no_track = await client.get("/?pimms_id=fresh&pimms-no-track")
    assert both.json()["click_id"] == "current"
    assert legacy.json()["click_id"] == "legacy"
    assert dub.json()["click_id"] is None
    assert landing.headers["set-cookie"].startswith("pimms_id=fresh;")
    assert "set-cookie" not in no_track.headers


async def test_partner_data_is_parsed_and_decoded() -> None:
    data = {
        "clickId": "clk123",
        "partner": {
            "id": "pn_1",
            "name": quote("Zoë & Co"),
            "image": quote("https://img.example/z.png"),
        },
        "discount": {"id": "disc_1", "amount": 20, "type": "percentage", "maxDuration": 12},
    }
    # js-cookie percent-encodes the whole value, as Dub's script stores it.
    raw = quote(json.dumps(data, separators=(",", ":")), safe="")
    async with client_for(make_app()) as client:
        response = await client.get(
            "/", headers={"cookie": f"dub_id=clk123; dub_partner_data={raw}"}
        )
    assert response.json()["partner"] == "Zoë & Co"
    assert response.json()["discount"] == 20


@pytest.mark.parametrize("raw", ["not-json", "%7Bbroken", "[1,2]", '{"partner":"x"}'])
async def test_malformed_partner_data_is_ignored(raw: str) -> None:
    async with client_for(make_app()) as client:
        response = await client.get(
            "/", headers={"cookie": f"dub_id=clk123; dub_partner_data={raw}"}
        )
    assert response.status_code == 200
    assert response.json()["click_id"] == "clk123"
    assert response.json()["partner"] is None


async def test_partner_data_is_parsed_only_when_asked() -> None:
    seen: list[Any] = []

    async def endpoint(request: Request) -> Response:
        seen.append(get_attribution(request)._partner)
        return JSONResponse({})

    from starlette.applications import Starlette
    from starlette.routing import Route

    app = AttributionMiddleware(
        Starlette(routes=[Route("/", endpoint)]), Tracker("dub", transport=MemoryTransport())
    )
    async with client_for(app) as client:
        await client.get("/", headers={"cookie": 'dub_partner_data={"partner":{}}'})
    assert seen == [False]  # not parsed yet


async def test_concurrent_requests_never_share_attribution() -> None:
    """Servers may hand every request the same state dict; attribution must stay per request."""
    shared_state: dict[str, Any] = {"app_wide": "value"}
    app = make_app()

    async def one(i: int) -> tuple[int, Any]:
        headers = [(b"cookie", f"dub_id=click{i}".encode())] if i % 3 else []
        _, body = await raw_get(app, headers, state=shared_state)
        return i, json.loads(body)["click_id"]

    results = await asyncio.gather(*(one(i) for i in range(200)))
    for i, click_id in results:
        assert click_id == (f"click{i}" if i % 3 else None)
    assert shared_state == {"app_wide": "value"}


async def test_websocket_requests_are_attributed() -> None:
    sent = await websocket_sent(
        make_app(), [(b"cookie", b"dub_id=wsclick")], query=b"dub_id=ignored"
    )
    assert sent == {"click_id": "wsclick"}


class RecordingTransport(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def aclose(self) -> None:
        self.calls.append("aclose")


async def test_lifespan_starts_and_closes_the_tracker() -> None:
    transport = RecordingTransport()
    app = make_app(Tracker("dub", transport=transport))
    async with client_for(app) as client:
        assert transport.calls == ["start"]
        await client.get("/")
    assert transport.calls == ["start", "aclose"]


async def test_app_without_lifespan_starts_delivery_on_first_use() -> None:
    transport = RecordingTransport()
    tracker = Tracker("dub", transport=transport)

    async def signup(request: Request) -> Response:
        from asgi_attribution import track_lead

        result = await track_lead(request, "Sign up", customer_external_id="u1")
        return JSONResponse({"status": result.status})

    from starlette.applications import Starlette
    from starlette.routing import Route

    app = AttributionMiddleware(Starlette(routes=[Route("/", signup)]), tracker)
    async with client_for(app, lifespan=False) as client:
        response = await client.get("/", headers={"cookie": "dub_id=c1"})
    assert response.json() == {"status": "sent"}
    assert transport.calls == ["start"]
    assert [e.click_id for e in transport.events] == ["c1"]  # type: ignore[union-attr]


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    app = AttributionMiddleware(inner, Tracker("dub", transport=MemoryTransport()))
    await app({"type": "custom"}, None, None)  # type: ignore[arg-type]
    assert seen == ["custom"]


async def test_get_attribution_without_middleware_is_a_clear_error() -> None:
    async def endpoint(request: Request) -> Response:
        get_attribution(request)
        return Response()

    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route("/", endpoint)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError, match="add AttributionMiddleware"):
            await client.get("/")


async def test_landing_works_when_the_app_sends_no_headers_key() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200})  # "headers" is optional
        await send({"type": "http.response.body", "body": b"ok"})

    app = AttributionMiddleware(bare, Tracker("dub", transport=MemoryTransport()))
    async with client_for(app) as client:
        response = await client.get("/?dub_id=clk1")
    assert response.text == "ok"
    assert response.headers["set-cookie"].startswith("dub_id=clk1;")


async def test_outer_middleware_sees_what_the_endpoint_puts_on_request_state() -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.routing import Route

    seen: list[Any] = []

    async def endpoint(request: Request) -> Response:
        request.state.user = "ada"
        return JSONResponse({"click_id": get_attribution(request).click_id})

    async def outer(request: Request, call_next: Any) -> Response:
        request.state.before = True
        response = await call_next(request)
        seen.append(getattr(request.state, "user", None))
        return response  # type: ignore[no-any-return]

    app = Starlette(
        routes=[Route("/", endpoint)],
        middleware=[
            Middleware(BaseHTTPMiddleware, dispatch=outer),
            Middleware(AttributionMiddleware, tracker=Tracker("dub", transport=MemoryTransport())),
        ],
    )
    async with client_for(app) as client:
        response = await client.get("/", headers={"cookie": "dub_id=c1"})
    assert response.json() == {"click_id": "c1"}
    assert seen == ["ada"]
