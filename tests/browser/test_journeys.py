"""A visitor's journey from a short link to a signup, in a real browser against real servers.

Headless Chromium talks to the example app (uvicorn on 127.0.0.1); the app's tracker sends leads
over a socket to a ``FakeProvider``. Each journey ends with a screenshot in
``test-results/browser/``. Run just these with ``pytest tests/browser``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from .conftest import (
    DEADLINE_SECONDS,
    block_provider_scripts,
    closed_port_url,
    save_screenshot,
    silent_server,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

    from .conftest import Site

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture explains; CI must not get here without Playwright
    if os.environ.get("CI"):
        raise
    pytest.skip("Playwright for Python is not installed", allow_module_level=True)

SiteFactory = Callable[..., "Site"]
T = TypeVar("T")

NINETY_DAYS = 90 * 24 * 60 * 60
CLICK = "cm3browser7Qx2Lp9"
REFER_DOMAIN = "go.acme.com"
JOHN = {
    "partner": {"id": "pn_john", "name": "John Doe", "image": "https://example.com/john.png"},
    "discount": {"id": "disc_john", "amount": 25, "type": "percentage", "maxDuration": None},
}
LINKS = {(REFER_DOMAIN, "john"): JOHN}
JOHN_BANNER = "John Doe referred you: 25% off"
CLICK_TIMEOUT = 1.0


# -- helpers -------------------------------------------------------------------------------------


def wait_for(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def cookie(context: BrowserContext, name: str) -> dict[str, Any] | None:
    """The browser's cookie ``name`` (as Chromium stores it), or ``None``."""
    found = [dict(c) for c in context.cookies() if c["name"] == name]
    assert len(found) <= 1, f"more than one {name} cookie: {found}"
    return found[0] if found else None


def browse_to_signup(page: Page) -> None:
    """From any page: follow the links a visitor would, landing -> pricing -> signup form."""
    page.get_by_role("link", name="Acme", exact=True).click()
    page.wait_for_url("**/")
    page.get_by_role("link", name="See pricing").click()
    page.wait_for_url("**/pricing")
    expect(page.get_by_role("heading", level=1)).to_have_text("Pricing")
    page.get_by_role("link", name="Start free").click()
    page.wait_for_url("**/signup")


def sign_up(page: Page, name: str = "Ada Lovelace", email: str = "ada@example.com") -> None:
    """Fill in and submit the signup form; wait for the welcome page."""
    page.get_by_label("Name").fill(name)
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/welcome/*")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome aboard")


def set_cookie_from_script(page: Page, name: str, value: str) -> None:
    """Set a cookie the way Dub's browser script does: from page JavaScript, not the server."""
    page.evaluate(
        "([name, value]) => { document.cookie = `${name}=${value}; path=/; SameSite=Lax`; }",
        [name, value],
    )


# -- journeys ------------------------------------------------------------------------------------


def test_landing_browse_signup_sends_one_lead(page: Page, serve_site: SiteFactory) -> None:
    site = serve_site()

    # 1. The short link redirects here with the click id; the server sets the cookie.
    landing = page.goto(f"{site.url}/?dub_id={CLICK}")
    assert landing is not None and landing.status == 200
    set_cookies = (landing.header_value("set-cookie") or "").split("\n")
    assert any(c.startswith(f"dub_id={CLICK};") for c in set_cookies), set_cookies
    click_cookie = cookie(page.context, "dub_id")
    assert click_cookie is not None, "the landing did not leave a dub_id cookie"
    assert click_cookie["value"] == CLICK
    assert click_cookie["domain"] == "127.0.0.1"  # host-only: no Domain on an IP address
    assert click_cookie["path"] == "/"
    assert click_cookie["sameSite"] == "Lax"
    assert click_cookie["httpOnly"] is False  # Dub's own script must be able to read it
    assert click_cookie["secure"] is False  # plain http here; https adds Secure
    lifetime = click_cookie["expires"] - time.time()  # an attribute, not a measured duration
    assert NINETY_DAYS - 3600 < lifetime <= NINETY_DAYS + 60, lifetime

    # 2. Two more pages; the cookie goes along without any JavaScript.
    browse_to_signup(page)

    # 3. A signup the server rejects (the browser accepts "ada@example") keeps the click.
    page.get_by_label("Name").fill("Ada Lovelace")
    page.get_by_label("Email").fill("ada@example")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator(".error")).to_have_text("Please enter a valid email address.")
    assert cookie(page.context, "dub_id") == click_cookie

    sign_up(page)
    expect(page.locator("#credited")).to_have_text(CLICK)

    # 4. Exactly one lead, with that click id, crossed the socket to the provider.
    wait_for(site.leads, "the lead to reach the provider")
    site.close()  # drains the tracker: anything else tracked has arrived by now
    leads = site.leads()
    assert len(leads) == 1, leads
    assert leads[0]["clickId"] == CLICK
    assert leads[0]["eventName"] == "Sign up"
    assert leads[0]["customerEmail"] == "ada@example.com"
    assert leads[0]["customerName"] == "Ada Lovelace"
    assert leads[0]["customerExternalId"].startswith("user_")
    assert [r.status for r in site.provider.requests] == [200]


@pytest.mark.parametrize(
    ("model", "credited"),
    [("first-click", "cm_first_click"), ("last-click", "cm_second_click")],
)
def test_second_landing_keeps_or_replaces_the_click(
    page: Page, serve_site: SiteFactory, model: str, credited: str
) -> None:
    site = serve_site(attribution_model=model)

    page.goto(f"{site.url}/?dub_id=cm_first_click")
    page.get_by_role("link", name="See pricing").click()
    page.wait_for_url("**/pricing")
    # Days later, the same visitor clicks another link.
    page.goto(f"{site.url}/pricing?dub_id=cm_second_click")
    click_cookie = cookie(page.context, "dub_id")
    assert click_cookie is not None and click_cookie["value"] == credited

    page.get_by_role("link", name="Start free").click()
    page.wait_for_url("**/signup")
    sign_up(page)
    expect(page.locator("#credited")).to_have_text(credited)

    wait_for(site.leads, "the lead to reach the provider")
    site.close()
    assert [lead["clickId"] for lead in site.leads()] == [credited]


def test_cookie_set_by_page_javascript_is_read_by_the_server(
    page: Page, serve_site: SiteFactory
) -> None:
    site = serve_site()
    click = "cm3fromScript42"

    page.goto(f"{site.url}/")
    assert cookie(page.context, "dub_id") is None
    set_cookie_from_script(page, "dub_id", click)
    script_cookie = cookie(page.context, "dub_id")
    assert script_cookie is not None and script_cookie["value"] == click

    browse_to_signup(page)
    sign_up(page)
    expect(page.locator("#credited")).to_have_text(click)

    wait_for(site.leads, "the lead to reach the provider")
    site.close()
    assert [lead["clickId"] for lead in site.leads()] == [click]


def test_partner_banner_from_dub_partner_data(page: Page, serve_site: SiteFactory) -> None:
    site = serve_site()
    click = "cm3partnerClick1"

    page.goto(f"{site.url}/?dub_id={click}")
    expect(page.locator(".banner")).to_have_count(0)
    # Dub's script stores the partner as JSON, with the name (and image) URI-encoded.
    partner_data = {
        "clickId": click,
        "partner": {
            "id": "pn_ada",
            "name": "Ada%20Lovelace",
            "image": "https%3A%2F%2Fexample.com%2Fada.png",
        },
        "discount": {"id": "disc_1", "amount": 20, "type": "percentage", "maxDuration": None},
    }
    set_cookie_from_script(page, "dub_partner_data", json.dumps(partner_data))
    page.reload()
    expect(page.locator(".banner")).to_have_text("Ada Lovelace referred you: 20% off")

    browse_to_signup(page)
    expect(page.locator(".banner")).to_have_text("Ada Lovelace referred you: 20% off")
    sign_up(page)
    expect(page.locator("#credited")).to_have_text(click)

    wait_for(site.leads, "the lead to reach the provider")
    site.close()
    assert [lead["clickId"] for lead in site.leads()] == [click]


def test_pimms_journey(page: Page, serve_site: SiteFactory) -> None:
    site = serve_site("pimms")
    click = "pm_9xYb2Lq"

    landing = page.goto(f"{site.url}/?pimms_id={click}")
    assert landing is not None and landing.status == 200
    click_cookie = cookie(page.context, "pimms_id")
    assert click_cookie is not None
    assert click_cookie["value"] == click
    assert click_cookie["path"] == "/"
    assert click_cookie["sameSite"] == "Lax"
    assert cookie(page.context, "dub_id") is None

    browse_to_signup(page)
    sign_up(page, name="Grace Hopper", email="grace@example.com")
    expect(page.locator("#credited")).to_have_text(click)

    wait_for(site.leads, "the lead to reach PIMMS")
    site.close()
    leads = site.leads()
    assert len(leads) == 1, leads
    assert leads[0]["clickId"] == click
    assert leads[0]["externalId"].startswith("user_")  # PIMMS' name for the customer's id
    assert "customerExternalId" not in leads[0]
    assert leads[0]["customerEmail"] == "grace@example.com"


def test_organic_visitor_signs_up_without_a_lead(page: Page, serve_site: SiteFactory) -> None:
    site = serve_site()

    landing = page.goto(f"{site.url}/")
    assert landing is not None and landing.status == 200
    assert landing.header_value("set-cookie") is None
    browse_to_signup(page)
    sign_up(page, name="Organic Olivia", email="olivia@example.com")
    expect(page.locator("#credited")).to_have_text("not credited to any click (organic visit)")
    assert cookie(page.context, "dub_id") is None

    site.close()
    assert site.provider.requests == [], "an organic signup must not call the provider"


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("url", "<script>alert(1)</script>"),
        ("url", "x" * 65),
        ("url", "abc; Path=/; Domain=evil.example"),
        ("cookie", "not.a.click!id"),
        ("cookie", "y" * 65),
    ],
    ids=["url-markup", "url-too-long", "url-cookie-injection", "cookie-bad-chars", "cookie-long"],
)
def test_malformed_click_id_is_ignored(
    page: Page, serve_site: SiteFactory, where: str, value: str
) -> None:
    site = serve_site()

    if where == "url":
        landing = page.goto(f"{site.url}/?dub_id={value}")
        assert landing is not None and landing.status == 200
        assert landing.header_value("set-cookie") is None
        assert cookie(page.context, "dub_id") is None
    else:
        page.goto(f"{site.url}/")
        set_cookie_from_script(page, "dub_id", value)
        landing = page.reload()
        assert landing is not None and landing.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("Ship faster with Acme")
    expect(page.locator("body")).not_to_contain_text("alert(1)")

    browse_to_signup(page)
    sign_up(page)
    expect(page.locator("#credited")).to_have_text("not credited to any click (organic visit)")

    site.close()
    assert site.provider.requests == [], "a malformed click id must never reach the provider"


# -- partner links on the site itself (?via=), the provider's script blocked ----------------------


def test_partner_link_lands_from_the_server_with_the_script_blocked(
    page: Page, serve_site: SiteFactory, blocked: list[str]
) -> None:
    # known_clicks=(): the provider credits a lead only to a click it recorded itself.
    site = serve_site(links=LINKS, known_clicks=(), refer_domain=REFER_DOMAIN)

    # 1. A partner's link to the main site: no click id, and Dub's script never runs.
    landing = page.goto(f"{site.url}/?via=john")
    assert landing is not None and landing.status == 200
    # The page includes Dub's script like a real site; the browser blocked it, as ad blockers do.
    expect(page.locator('script[src*="dubcdn.com"]')).to_have_count(1)
    assert blocked == ["https://www.dubcdn.com/analytics/script.js"], blocked
    expect(page.locator(".banner")).to_have_text(JOHN_BANNER)
    save_screenshot(page, "test_partner_link_landing")

    # 2. The server called /track/click once, as the visitor: Chromium's own User-Agent.
    clicks = site.provider.clicks()
    assert len(clicks) == 1, clicks
    click = clicks[0]
    assert (click.domain, click.key) == (REFER_DOMAIN, "john")
    assert click.user_agent == page.evaluate("navigator.userAgent")
    assert click.user_agent == landing.request.header_value("user-agent")
    assert "Chrome/" in click.user_agent and "Headless" not in click.user_agent
    assert click.url == f"{site.url}/?via=john"

    # 3. Both cookies are in the browser, set by the landing's response (not by a script).
    click_cookie = cookie(page.context, "dub_id")
    assert click_cookie is not None and click_cookie["value"] == click.id
    assert click_cookie["httpOnly"] is False and click_cookie["sameSite"] == "Lax"
    partner_cookie = cookie(page.context, "dub_partner_data")
    assert partner_cookie is not None
    assert partner_cookie["path"] == "/" and partner_cookie["sameSite"] == "Lax"
    partner_data = json.loads(partner_cookie["value"])  # the script's format: JSON, name encoded
    assert partner_data["clickId"] == click.id
    assert partner_data["partner"]["name"] == "John%20Doe"
    assert partner_data["partner"]["image"] == "https%3A%2F%2Fexample.com%2Fjohn.png"
    assert partner_data["discount"]["amount"] == 25
    set_cookies = (landing.header_value("set-cookie") or "").split("\n")
    assert any(c.startswith(f"dub_id={click.id};") for c in set_cookies), set_cookies
    assert any(c.startswith("dub_partner_data=") for c in set_cookies), set_cookies

    # 4. Pricing, then signup: the banner follows from the cookie; no second click is made.
    page.get_by_role("link", name="See pricing").click()
    page.wait_for_url("**/pricing")
    expect(page.locator(".banner")).to_have_text(JOHN_BANNER)
    page.get_by_role("link", name="Start free").click()
    page.wait_for_url("**/signup")
    expect(page.locator(".banner")).to_have_text(JOHN_BANNER)
    sign_up(page, name="Jane Referred", email="jane@example.com")
    expect(page.locator("#credited")).to_have_text(click.id)
    expect(page.locator(".banner")).to_have_text(JOHN_BANNER)

    # 5. Exactly one lead, credited to the click the provider recorded.
    wait_for(site.leads, "the lead to reach the provider")
    site.close()
    leads = site.leads()
    assert len(leads) == 1, leads
    assert leads[0]["clickId"] == click.id
    assert leads[0]["customerEmail"] == "jane@example.com"
    assert site.paths() == ["POST /track/click", "POST /track/lead"]
    assert [r.status for r in site.provider.requests] == [200, 200]
    assert len(site.provider.clicks()) == 1


def test_partner_short_link_with_a_click_id_makes_no_second_click(
    page: Page, serve_site: SiteFactory
) -> None:
    site = serve_site(links=LINKS, refer_domain=REFER_DOMAIN)

    # A partner short link (go.acme.com/john) recorded the click and redirects with both.
    landing = page.goto(f"{site.url}/?via=john&dub_id={CLICK}")
    assert landing is not None and landing.status == 200
    click_cookie = cookie(page.context, "dub_id")
    assert click_cookie is not None and click_cookie["value"] == CLICK

    browse_to_signup(page)
    sign_up(page)
    expect(page.locator("#credited")).to_have_text(CLICK)

    wait_for(site.leads, "the lead to reach the provider")
    site.close()
    assert site.provider.clicks() == []
    assert site.paths() == ["POST /track/lead"]
    assert [lead["clickId"] for lead in site.leads()] == [CLICK]


def test_headless_chromium_is_a_bot_and_gets_no_click(
    browser: Browser, serve_site: SiteFactory, blocked: list[str], request: pytest.FixtureRequest
) -> None:
    site = serve_site(links=LINKS, refer_domain=REFER_DOMAIN)
    # Chromium's own headless User-Agent, untouched: Dub's bot filter names HeadlessChrome.
    context = browser.new_context(viewport={"width": 900, "height": 640})
    context.set_default_timeout(DEADLINE_SECONDS * 1000)
    block_provider_scripts(context, blocked)
    try:
        page = context.new_page()
        assert "HeadlessChrome/" in page.evaluate("navigator.userAgent")
        landing = page.goto(f"{site.url}/?via=john")
        assert landing is not None and landing.status == 200
        expect(page.get_by_role("heading", level=1)).to_have_text("Ship faster with Acme")
        expect(page.locator(".banner")).to_have_count(0)
        assert landing.header_value("set-cookie") is None
        assert context.cookies() == []
        save_screenshot(page, request.node.name)
    finally:
        context.close()
    site.close()
    assert site.provider.requests == [], "a bot's landing must not mint a click"


@pytest.mark.parametrize("failure", ["hanging", "refused", "unknown-link"])
def test_unreachable_track_click_still_serves_the_landing(
    page: Page, serve_site: SiteFactory, failure: str
) -> None:
    with silent_server() as silent:
        if failure == "hanging":  # accepts the connection, reads the request, never answers
            base_url: str | None = silent.url
        elif failure == "refused":  # nothing listens there
            base_url = closed_port_url()
        else:  # the fake answers 404: Dub has no link go.acme.com/john
            base_url = None
        site = serve_site(
            links={}, base_url=base_url, refer_domain=REFER_DOMAIN, click_timeout=CLICK_TIMEOUT
        )

        started = time.monotonic()
        landing = page.goto(f"{site.url}/?via=john")
        elapsed = time.monotonic() - started
        assert landing is not None and landing.status == 200
        expect(page.get_by_role("heading", level=1)).to_have_text("Ship faster with Acme")
        # The budget: the call gives up at click_timeout; the page itself takes milliseconds.
        assert elapsed < CLICK_TIMEOUT + 1.0, f"the landing took {elapsed:.2f}s"
        expect(page.locator(".banner")).to_have_count(0)
        assert landing.header_value("set-cookie") is None
        assert page.context.cookies() == []

        if failure == "hanging":
            requests = silent.requests()
            assert len(requests) == 1, requests
            assert requests[0].startswith(b"POST /track/click "), requests[0][:80]

        # The visitor carries on, organic: the signup sends no lead.
        browse_to_signup(page)
        sign_up(page)
        expect(page.locator("#credited")).to_have_text("not credited to any click (organic visit)")
        site.close()

    expected = ["POST /track/click"] if failure == "unknown-link" else []
    assert site.paths() == expected
    assert [r.status for r in site.provider.requests] == [404] * len(expected)
    assert site.provider.clicks() == []
