"""Clean URLs and OAuth round trips in headless Chromium, through uvicorn and the fake provider.

The site runs on ``http://localhost:<port>``; the identity provider on ``http://127.0.0.1:<port>``,
another site: its ``form_post`` back to the callback is a cross-site POST, which carries no
``SameSite=Lax`` cookie (as "Sign in with Apple" does), so only the token brings the click back.
"""

from __future__ import annotations

import html
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from asgi_attribution import (
    AttributionMiddleware,
    RetryPolicy,
    Tracker,
    attribution_state,
    get_attribution,
    restore_attribution,
    track_lead,
)
from asgi_attribution._signing import StateTokens
from asgi_attribution.testing import FakeProvider, serve_in_thread

from .conftest import API_KEY, DEADLINE_SECONDS

if TYPE_CHECKING:
    from playwright.sync_api import Page

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture explains; CI must not get here without Playwright
    if os.environ.get("CI"):
        raise
    pytest.skip("Playwright for Python is not installed", allow_module_level=True)

SECRET = "browser-test-secret"
CLICK = "cm3clean7Qx2Lp9"


def site_app(tracker: Tracker, callbacks: list[dict[str, Any]]) -> Any:
    async def home(request: Request) -> Response:
        a = get_attribution(request)
        return HTMLResponse(f"<h1 id=click>{a.click_id}</h1><p id=source>{a.source}</p>")

    async def login(request: Request) -> Response:
        # The OAuth redirect: our state (CSRF value and the attribution token) goes along.
        query = urlencode(
            {
                "state": attribution_state(request),
                "redirect_uri": f"{request.base_url}callback",
                "response_mode": "form_post",
            }
        )
        idp = request.query_params["idp"]
        return RedirectResponse(f"{idp}/authorize?{query}", status_code=303)

    async def callback(request: Request) -> Response:
        form = await request.form()
        had_cookie = "dub_id" in request.cookies
        response = RedirectResponse("/", status_code=303)
        restored = restore_attribution(request, response, str(form["state"]))
        result = await track_lead(request, "Sign up", customer_external_id=str(form["code"]))
        callbacks.append(
            {
                "had_cookie": had_cookie,
                "restored": restored,
                "source": get_attribution(request).source,
                "status": result.status,
            }
        )
        return response

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/login", login),
            Route("/callback", callback, methods=["POST"]),
        ]
    )
    app.add_middleware(
        AttributionMiddleware, tracker=tracker, clean_urls=True, signing_secrets=SECRET
    )
    return app


async def authorize(request: Request) -> Response:
    """The identity provider: signs the user in and posts back to the site (form_post)."""
    q = request.query_params
    return HTMLResponse(
        f"""<form method=post action="{html.escape(q["redirect_uri"])}">
        <input type=hidden name=state value="{html.escape(q["state"])}">
        <input type=hidden name=code value="apple_user_1">
        </form><script>document.forms[0].submit()</script>"""
    )


class Sites:
    def __init__(self, stack: ExitStack) -> None:
        self.provider = FakeProvider("dub", api_key=API_KEY)
        fake_url = stack.enter_context(serve_in_thread(self.provider))
        tracker = Tracker(
            "dub",
            api_key=API_KEY,
            base_url=fake_url,
            retry=RetryPolicy(max_elapsed=DEADLINE_SECONDS),
        )
        self.callbacks: list[dict[str, Any]] = []
        served = stack.enter_context(serve_in_thread(site_app(tracker, self.callbacks)))
        # localhost and 127.0.0.1 are two sites to the browser.
        self.site = served.replace("127.0.0.1", "localhost")
        self.idp = stack.enter_context(
            serve_in_thread(Starlette(routes=[Route("/authorize", authorize)]))
        )


@pytest.fixture
def sites() -> Iterator[Sites]:
    stack = ExitStack()
    try:
        yield Sites(stack)
    finally:
        stack.close()


def click_cookie(page: Page) -> str | None:
    found = [c["value"] for c in page.context.cookies() if c["name"] == "dub_id"]
    return found[0] if found else None


def test_a_clean_url_landing_redirects_once_and_keeps_the_cookie(page: Page, sites: Sites) -> None:
    response = page.goto(f"{sites.site}/?utm_source=news&dub_id={CLICK}&ref=a%20b")
    assert response is not None and response.status == 200
    assert (
        urlsplit(page.url).path == "/" and urlsplit(page.url).query == "utm_source=news&ref=a%20b"
    )
    first = response.request.redirected_from
    assert first is not None and first.redirected_from is None  # one redirect, no loop
    assert first.response() is not None and first.response().status == 303  # type: ignore[union-attr]
    assert click_cookie(page) == CLICK
    expect(page.locator("#click")).to_have_text(CLICK)
    expect(page.locator("#source")).to_have_text("cookie")


def test_a_cross_site_form_post_callback_restores_the_click(page: Page, sites: Sites) -> None:
    page.goto(f"{sites.site}/?dub_id={CLICK}")
    assert click_cookie(page) == CLICK
    page.goto(f"{sites.site}/login?idp={sites.idp}")
    page.wait_for_url(f"{sites.site}/")  # idp -> form_post -> callback -> 303 home
    expect(page.locator("#click")).to_have_text(CLICK)
    assert sites.callbacks == [
        # The cross-site POST came without the Lax cookie; the token brought the click back.
        {"had_cookie": False, "restored": True, "source": "restored", "status": "queued"}
    ]
    provider = sites.provider
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not provider.leads() and time.monotonic() < deadline:
        time.sleep(0.05)
    leads = provider.leads()
    assert [(lead["clickId"], lead["customerExternalId"]) for lead in leads] == [
        (CLICK, "apple_user_1")
    ]


def bad_states() -> dict[str, str]:
    good = StateTokens(SECRET, salt="asgi-attribution.state.dub").dumps({"c": CLICK})
    head, _, signature = good.rpartition(".")
    return {
        "garbage": "garbage",
        # The first character: the last one of base64 carries padding bits, and a change there
        # can decode to the same signature.
        "tampered": f"{head}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}",
        "expired": StateTokens(
            SECRET, salt="asgi-attribution.state.dub", clock=lambda: time.time() - 7200
        ).dumps({"c": CLICK}),
        "foreign": StateTokens("another-secret", salt="asgi-attribution.state.dub").dumps(
            {"c": CLICK}
        ),
    }


@pytest.mark.parametrize("kind", sorted(bad_states()))
def test_a_bad_token_restores_nothing_and_warns(
    page: Page, sites: Sites, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = bad_states()[kind]
    query = urlencode({"state": state, "redirect_uri": f"{sites.site}/callback"})
    with caplog.at_level(logging.WARNING, "asgi_attribution"):
        page.goto(f"{sites.idp}/authorize?{query}")
        page.wait_for_url(f"{sites.site}/")
    expect(page.locator("#click")).to_have_text("None")
    assert click_cookie(page) is None
    assert sites.callbacks == [
        {"had_cookie": False, "restored": False, "source": None, "status": "skipped"}
    ]
    warned = [r for r in caplog.records if "attribution state ignored" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert sites.provider.leads() == []
