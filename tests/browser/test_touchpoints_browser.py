"""Touchpoints in real Chromium: an ad landing, a partner landing days later, a signup.

Headless Chromium talks to a FastAPI app under uvicorn with ``touchpoints=True``; the app's
tracker sends the lead over a socket to a ``FakeProvider``. The browser sends what it sends on
its own (``Sec-Fetch-Mode``, ``Referer``): the test only navigates, clicks and fetches.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from asgi_attribution import (
    AttributionMiddleware,
    RetryPolicy,
    Tracker,
    get_attribution,
    track_lead,
)
from asgi_attribution.testing import FakeProvider, serve_in_thread

from .conftest import API_KEY, DEADLINE_SECONDS

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture explains; CI must not get here without Playwright
    if os.environ.get("CI"):
        raise
    pytest.skip("Playwright for Python is not installed", allow_module_level=True)

NINETY_DAYS = 90 * 24 * 60 * 60
CLICK = "cmTouchBrowser7"


def page_for(request: Request, title: str, body: str = "") -> HTMLResponse:
    points = get_attribution(request).touchpoints
    shown = {
        "first": None if points.first is None else points.first.as_dict(),
        "last": None if points.last is None else points.last.as_dict(),
    }
    return HTMLResponse(
        f"<!doctype html><title>{title}</title><h1>{title}</h1>"
        f'<a href="/pricing">See pricing</a> <a href="/signup">Start free</a>'
        f'<pre id="touches">{html.escape(json.dumps(shown))}</pre>{body}'
    )


def touch_site(tracker: Tracker) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def home(request: Request) -> HTMLResponse:
        return page_for(request, "Acme")

    @app.get("/pricing")
    async def pricing(request: Request) -> HTMLResponse:
        return page_for(request, "Pricing")

    @app.get("/signup")
    async def signup_form(request: Request) -> HTMLResponse:
        form = (
            '<form method="post" action="/signup"><label>Email <input name="email"></label>'
            '<button type="submit">Create account</button></form>'
        )
        return page_for(request, "Sign up", form)

    @app.post("/signup")
    async def signup(request: Request, email: str = Form(...)) -> RedirectResponse:
        await track_lead(request, "Sign up", customer_external_id="user_" + email.split("@")[0])
        return RedirectResponse("/welcome", status_code=303)

    @app.get("/welcome")
    async def welcome(request: Request) -> HTMLResponse:
        return page_for(request, "Welcome aboard")

    app.add_middleware(AttributionMiddleware, tracker=tracker, touchpoints=True)
    return app


@pytest.fixture
def site() -> Iterator[tuple[str, FakeProvider, ExitStack]]:
    stack = ExitStack()
    with stack:
        fake = FakeProvider("dub", api_key=API_KEY)
        fake_url = stack.enter_context(serve_in_thread(fake))
        tracker = Tracker(
            "dub",
            api_key=API_KEY,
            base_url=fake_url,
            retry=RetryPolicy(max_elapsed=DEADLINE_SECONDS),
            touchpoints_metadata_key="touchpoints",
        )
        url = stack.enter_context(serve_in_thread(touch_site(tracker)))
        yield url, fake, stack


def shown(page: Page) -> dict[str, Any]:
    return dict(json.loads(page.locator("#touches").inner_text()))


def touch_cookie(context: BrowserContext) -> dict[str, Any] | None:
    found = [dict(c) for c in context.cookies() if c["name"] == "attribution_touch"]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_ad_landing_then_partner_landing_then_signup_carries_both_touches(
    page: Page, site: tuple[str, FakeProvider, ExitStack]
) -> None:
    url, fake, stack = site

    # 1. An ad click: UTM tags and a gclid, from a search page on another site.
    page.goto(
        f"{url}/?utm_source=google&utm_medium=cpc&utm_campaign=spring&gclid=GbrowserAd1",
        referer="https://www.google.com/",
    )
    stored = touch_cookie(page.context)
    assert stored is not None, "the landing left no touch cookie"
    assert stored["httpOnly"] is True and stored["sameSite"] == "Lax"
    assert stored["path"] == "/" and stored["domain"] == "127.0.0.1"
    lifetime = stored["expires"] - time.time()  # an attribute, not a measured duration
    assert NINETY_DAYS - 3600 < lifetime <= NINETY_DAYS + 60, lifetime
    assert len(stored["value"]) <= 1500
    first = shown(page)["first"]
    assert first["gclid"] == "GbrowserAd1" and first["referrer"] == "www.google.com"
    assert page.evaluate("document.cookie").find("attribution_touch") == -1  # HttpOnly

    # 2. A fetch from the page with campaign tags is no navigation: nothing changes.
    status = page.evaluate("fetch('/pricing?utm_source=fetched').then(r => r.status)")
    assert status == 200
    assert touch_cookie(page.context) == stored

    # 3. Browsing inside the site keeps the touch; no new cookie.
    page.get_by_role("link", name="See pricing").click()
    page.wait_for_url("**/pricing")
    assert shown(page)["first"] == first
    assert touch_cookie(page.context) == stored

    # 4. Later, a partner's Dub link lands here with its click id.
    page.goto(f"{url}/?dub_id={CLICK}&utm_source=partner", referer="https://dub.sh/")
    touches = shown(page)
    assert touches["first"] == first
    assert touches["last"]["click_id"] == CLICK
    assert touches["last"]["utm_source"] == "partner"

    # 5. The signup form posts; the lead carries the partner's click and both touches.
    page.get_by_role("link", name="Start free").click()
    page.wait_for_url("**/signup")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/welcome")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome aboard")

    deadline = time.monotonic() + DEADLINE_SECONDS
    while not fake.leads():
        assert time.monotonic() < deadline, "the lead never reached the provider"
        time.sleep(0.02)
    stack.close()  # drains the tracker: anything else tracked has arrived by now
    [lead] = fake.leads()
    assert lead["clickId"] == CLICK
    assert lead["metadata"]["touchpoints"]["first"]["gclid"] == "GbrowserAd1"
    assert lead["metadata"]["touchpoints"]["last"]["click_id"] == CLICK


def test_a_cookie_edited_in_the_browser_is_ignored(
    page: Page, site: tuple[str, FakeProvider, ExitStack]
) -> None:
    url, _, _ = site
    page.goto(f"{url}/?utm_source=real")
    stored = touch_cookie(page.context)
    assert stored is not None
    page.context.add_cookies([{**stored, "value": "eyJmIjpbXX0"}])  # {"f":[]}: not ours
    page.goto(f"{url}/pricing")
    assert shown(page) == {"first": None, "last": None}
