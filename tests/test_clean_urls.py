"""``clean_urls=True``: a captured navigation landing is answered 303 to the URL without the
click parameters, with the cookies on the 303; never for anything else. Through each framework's
own test client (Starlette, FastAPI, Litestar) and the fake provider over a real socket."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from litestar import Litestar, get, head, post
from litestar import Request as LitestarRequest
from litestar.testing import TestClient as LitestarClient
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_attribution import (
    AttributionMiddleware,
    RetryPolicy,
    Tracker,
    get_attribution,
    track_lead,
)
from asgi_attribution.litestar import AttributionPlugin
from asgi_attribution.testing import FakeProvider, serve_in_thread

from .support.asgi import KEY

with warnings.catch_warnings():
    # Starlette >= 1.1 warns at import that its test client would rather run on httpx2.
    warnings.filterwarnings(
        "ignore", "Using `httpx` with `starlette.testclient`", StarletteDeprecationWarning
    )
    from starlette.testclient import TestClient

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
NAVIGATE = {"user-agent": BROWSER, "sec-fetch-mode": "navigate", "sec-fetch-dest": "document"}


def tracker_for(url: str) -> Tracker:
    return Tracker(
        "dub", api_key=KEY, base_url=url, retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1)
    )


# -- one site per framework: GET pages that count their calls, POST /signup tracks a lead -------


class Calls:
    def __init__(self) -> None:
        self.pages = 0


def starlette_site(tracker: Tracker, calls: Calls, **options: Any) -> Any:
    async def page(request: Request) -> Response:
        calls.pages += 1
        return JSONResponse({"click_id": get_attribution(request).click_id})

    async def signup(request: Request) -> Response:
        result = await track_lead(
            request, "Sign up", customer_external_id=request.query_params["u"]
        )
        return JSONResponse({"status": result.status})

    routes = [
        Route("/", page, methods=["GET", "HEAD", "POST"]),
        Route("/shop/item", page, methods=["GET", "HEAD", "POST"]),
        Route("/signup", signup, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(AttributionMiddleware, tracker=tracker, **options)
    return app


def fastapi_site(tracker: Tracker, calls: Calls, **options: Any) -> Any:
    app = FastAPI()

    @app.api_route("/", methods=["GET", "HEAD", "POST"])
    @app.api_route("/shop/item", methods=["GET", "HEAD", "POST"])
    async def page(request: FastAPIRequest) -> dict[str, Any]:
        calls.pages += 1
        return {"click_id": get_attribution(request).click_id}

    @app.post("/signup")
    async def signup(u: str, request: FastAPIRequest) -> dict[str, Any]:
        result = await track_lead(request, "Sign up", customer_external_id=u)
        return {"status": result.status}

    app.add_middleware(AttributionMiddleware, tracker=tracker, **options)
    return app


def litestar_site(tracker: Tracker, calls: Calls, **options: Any) -> Any:
    @get(["/", "/shop/item"])
    async def page(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        calls.pages += 1
        return {"click_id": get_attribution(request).click_id}

    @post(["/", "/shop/item"], status_code=200)
    async def page_post(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        calls.pages += 1
        return {"click_id": get_attribution(request).click_id}

    @head(["/", "/shop/item"])
    async def page_head() -> None:
        calls.pages += 1

    @post("/signup", status_code=200)
    async def signup(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        u = request.query_params["u"]
        result = await track_lead(request, "Sign up", customer_external_id=u)
        return {"status": result.status}

    plugin = AttributionPlugin(tracker=tracker, **options)
    return Litestar([page, page_post, page_head, signup], plugins=[plugin], logging_config=None)


Site = Callable[..., Any]
SITES: dict[str, tuple[Site, Any]] = {
    "starlette": (starlette_site, TestClient),
    "fastapi": (fastapi_site, TestClient),
    "litestar": (litestar_site, LitestarClient),
}


@pytest.fixture(params=sorted(SITES))
def served(request: pytest.FixtureRequest, provider: FakeProvider, url: str) -> Callable[..., Any]:
    """``served(**options)``: a context manager giving (client, calls) for the framework."""
    factory, client_class = SITES[request.param]

    @contextmanager
    def serve(**options: Any) -> Iterator[tuple[Any, Calls]]:
        calls = Calls()
        app = factory(tracker_for(url), calls, **options)
        with client_class(app, base_url="https://shop.example.com") as client:
            yield client, calls

    return serve


def cookies_of(response: Any) -> dict[str, str]:
    return {
        c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0]
        for c in response.headers.get_list("set-cookie")
    }


def target(response: Any) -> str:
    """The URL the browser goes to next: the Location resolved against the request's URL."""
    resolved = response.request.url.join(response.headers["location"])
    return str(resolved.raw_path.decode("ascii"))


# -- the 303 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("landing", "clean"),
    [
        ("/shop/item?utm_source=news&dub_id=clk1&b=2", "/shop/item?utm_source=news&b=2"),
        ("/shop/item?dub_id=clk1", "/shop/item"),
        ("/?dub_id=clk1", "/"),
        # Every other parameter kept byte for byte, in order (encodings, blanks, bare keys).
        ("/?a=%20x&dub_id=clk1&b=+&c&d=%C3%A9", "/?a=%20x&b=+&c&d=%C3%A9"),
        # The click id however it is spelled, every occurrence.
        ("/?dub_id=clk1&dub%5Fid=clk2&x=1", "/?x=1"),
        ("/?dub_id=clk1&x=1&dub_id=clk2", "/?x=1"),
    ],
)
def test_a_navigation_landing_is_answered_303_to_the_clean_url(
    served: Callable[..., Any], provider: FakeProvider, landing: str, clean: str
) -> None:
    with served(clean_urls=True) as (client, calls):
        response = client.get(landing, headers=NAVIGATE, follow_redirects=False)
        assert response.status_code == 303
        assert target(response) == clean
        assert cookies_of(response)["dub_id"] == "clk1"
        assert response.headers["cache-control"] == "no-store"
        assert calls.pages == 0  # the app answers the clean URL, not the landing
        # The browser follows once, with the cookie: no second redirect, the click kept.
        after = client.get(clean, headers=NAVIGATE, follow_redirects=False)
        assert after.status_code == 200 and after.json() == {"click_id": "clk1"}
        assert calls.pages == 1
        signup = client.post("/signup?u=user_1")
        assert signup.json() == {"status": "queued"}
    leads = provider.leads()
    assert [(lead["clickId"], lead["customerExternalId"]) for lead in leads] == [("clk1", "user_1")]


def test_without_sec_fetch_headers_a_browser_get_is_a_navigation(
    served: Callable[..., Any],
) -> None:
    with served(clean_urls=True) as (client, _):
        response = client.get(
            "/?dub_id=clk1", headers={"user-agent": BROWSER}, follow_redirects=False
        )
    assert response.status_code == 303 and target(response) == "/"


def test_the_signed_companion_is_set_on_the_303(served: Callable[..., Any]) -> None:
    with served(clean_urls=True, signing_secrets="s3cret") as (client, _):
        response = client.get("/?dub_id=clk1&a=1", headers=NAVIGATE, follow_redirects=False)
    assert response.status_code == 303 and target(response) == "/?a=1"
    assert set(cookies_of(response)) == {"dub_id", "dub_id_sig"}


ON = {"clean_urls": True}
LANDING = "/?dub_id=clk1"


def nav(**headers: str) -> dict[str, str]:
    return {**NAVIGATE, **{k.replace("_", "-"): v for k, v in headers.items()}}


# case: (options, method, path, headers, whether the landing is still captured)
NO_REDIRECT = {
    "off by default": ({}, "GET", LANDING, NAVIGATE, True),
    "POST": (ON, "POST", LANDING, NAVIGATE, True),
    "a fetch": (ON, "GET", LANDING, nav(sec_fetch_mode="cors"), True),
    "an iframe's no-cors": (ON, "GET", LANDING, nav(sec_fetch_mode="no-cors"), True),
    "a prefetch": (ON, "GET", LANDING, nav(sec_purpose="prefetch"), True),
    "a bot": (ON, "GET", LANDING, {"user-agent": "Googlebot/2.1"}, True),
    "no consent (Sec-GPC)": ({**ON, "honor_gpc": True}, "GET", LANDING, nav(sec_gpc="1"), False),
    "no consent (callable)": ({**ON, "consent": lambda r: False}, "GET", LANDING, NAVIGATE, False),
    "the no-track parameter": (ON, "GET", LANDING + "&dub-no-track", NAVIGATE, False),
    "an invalid id": (ON, "GET", "/?dub_id=bad%20id%3Cscript%3E", NAVIGATE, False),
    "an empty id": (ON, "GET", "/?dub_id=&x=1", NAVIGATE, False),
    "first-click keeps the old cookie": (
        {**ON, "attribution_model": "first-click"},
        "GET",
        "/?dub_id=clk2",
        nav(cookie="dub_id=clk1"),
        False,
    ),
    "capture off": ({**ON, "capture_landing": False}, "GET", LANDING, NAVIGATE, False),
}


@pytest.mark.parametrize("case", sorted(NO_REDIRECT))
def test_no_redirect(served: Callable[..., Any], case: str) -> None:
    options, method, path, headers, captured = NO_REDIRECT[case]
    with served(**options) as (client, calls):
        response = client.request(method, path, headers=headers, follow_redirects=False)
    assert response.status_code == 200, case
    assert calls.pages == 1, case  # the app answered the landing itself
    assert ("dub_id" in cookies_of(response)) is captured, case


def test_head_is_never_redirected(served: Callable[..., Any]) -> None:
    with served(clean_urls=True) as (client, calls):
        response = client.head("/?dub_id=clk1", headers=NAVIGATE, follow_redirects=False)
    assert response.status_code == 200 and calls.pages == 1


def test_a_redirect_goes_once_and_never_loops(served: Callable[..., Any]) -> None:
    with served(clean_urls=True) as (client, calls):
        response = client.get("/shop/item?dub_id=clk1&q=shoes", headers=NAVIGATE)
    assert response.status_code == 200 and response.json() == {"click_id": "clk1"}
    assert [r.status_code for r in response.history] == [303]
    assert str(response.url) == "https://shop.example.com/shop/item?q=shoes"
    assert calls.pages == 1


def test_clean_urls_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"AttributionMiddleware\(clean_urls=\.\.\.\) must be True"):
        AttributionMiddleware(Starlette(), Tracker("dub"), clean_urls="yes")  # type: ignore[arg-type]


# -- the target never leaves the site ------------------------------------------------------------


async def raw_landing(app: Any, raw_path: bytes, query: bytes) -> tuple[int, dict[bytes, bytes]]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(
        {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https",
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "root_path": "",
            "query_string": query,
            "headers": [(b"host", b"shop.example.com"), (b"user-agent", BROWSER.encode())],
            "server": ("shop.example.com", 443),
            "client": ("127.0.0.1", 1234),
        },
        receive,
        send,
    )
    return messages[0]["status"], dict(messages[0].get("headers", []))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw_path", [b"//evil.example/x", b"/\\evil.example", b"/a/..//evil.example", b"/%2F%2Fevil"]
)
async def test_the_target_never_leaves_the_site(url: str, raw_path: bytes) -> None:
    app = starlette_site(tracker_for(url), Calls(), clean_urls=True)
    status, headers = await raw_landing(app, raw_path, b"dub_id=clk1&x=1")
    assert status == 303
    landing = httpx.URL("https://shop.example.com" + raw_path.decode("latin-1"))
    resolved = landing.join(headers[b"location"].decode("latin-1"))
    assert resolved.host == "shop.example.com", resolved
    assert resolved.query == b"x=1"


# -- partner links (?via=) landed by the server ---------------------------------------------------

PARTNER = {"id": "pn_1", "name": "John Doe"}


# Not Litestar: its plugin never closes the partner clicks' HTTP client at shutdown (a
# ResourceWarning, reported apart); the partner landing itself is the middleware's, the same.
PARTNER_SITES = ["fastapi", "starlette"]


@pytest.fixture(scope="module")
def fake_links() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider("dub", api_key=KEY, links={("go.acme.com", "john"): {"partner": PARTNER}})
    with serve_in_thread(fake) as base:
        yield fake, base


@pytest.mark.parametrize("name", PARTNER_SITES)
def test_a_partner_landing_redirects_after_its_click_is_recorded(
    fake_links: tuple[FakeProvider, str], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake, base = fake_links
    fake.reset()
    factory, client_class = SITES[name]
    calls = Calls()
    app = factory(tracker_for(base), calls, clean_urls=True, refer_domain="go.acme.com")
    with (
        caplog.at_level(logging.WARNING, "asgi_attribution"),
        client_class(app, base_url="https://acme.com") as client,
    ):
        response = client.get(
            "/shop/item?via=john&utm_source=x", headers=NAVIGATE, follow_redirects=False
        )
        assert response.status_code == 303 and target(response) == "/shop/item?utm_source=x"
        cookies = cookies_of(response)
        click_id = cookies["dub_id"]
        assert "dub_partner_data" in cookies
        assert [c.id for c in fake.clicks()] == [click_id]  # recorded before the 303
        after = client.get("/shop/item?utm_source=x", headers=NAVIGATE)
        assert after.json() == {"click_id": click_id} and calls.pages == 1
        assert client.post("/signup?u=u1").json() == {"status": "queued"}
    assert len(fake.clicks()) == 1  # the clean URL made no second click
    assert [lead["clickId"] for lead in fake.leads()] == [click_id]
    # No partner-click or middleware complaint (the drain at shutdown may say it waited).
    assert not [r for r in caplog.records if r.module in ("_partners", "_middleware")]


@pytest.mark.parametrize("name", PARTNER_SITES)
def test_a_partner_link_that_finds_no_click_is_not_redirected(
    fake_links: tuple[FakeProvider, str], name: str
) -> None:
    _, base = fake_links
    factory, client_class = SITES[name]
    calls = Calls()
    app = factory(tracker_for(base), calls, clean_urls=True, refer_domain="go.acme.com")
    with client_class(app, base_url="https://acme.com") as client:
        response = client.get("/?via=nobody", headers=NAVIGATE, follow_redirects=False)
    assert response.status_code == 200 and calls.pages == 1
    assert "dub_id" not in cookies_of(response)
