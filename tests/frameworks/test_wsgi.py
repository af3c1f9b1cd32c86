"""The WSGI middleware in-process: Flask's test client, and a WSGI client on Django's WSGI app.

Django's own test ``Client`` calls its handler directly, around any WSGI middleware, so the
Django app is driven by werkzeug's WSGI client (what Flask's test client is built on). Leads go
to the fake provider over a real socket, from the tracker's owner thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from werkzeug.test import Client, TestResponse

from asgi_attribution import MemoryTransport, RetryPolicy, Tracker, get_attribution, sync
from asgi_attribution.testing import FakeProvider, serve_in_thread
from asgi_attribution.wsgi import AttributionMiddleware, scope_from_environ

from ..support import framework_apps, wsgi_apps
from ..support.asgi import KEY

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
PARTNER = {"id": "pn_1", "name": "John Doe"}


@pytest.fixture(scope="module")
def fake_links() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider("dub", api_key=KEY, links={("go.acme.com", "john"): {"partner": PARTNER}})
    with serve_in_thread(fake) as url:
        yield fake, url


def tracker_for(url: str) -> Iterator[Tracker]:
    tracker = Tracker(
        "dub", api_key=KEY, base_url=url, retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1)
    )
    yield tracker
    asyncio.run(tracker.aclose())  # on its owner thread: drains what it holds


@pytest.fixture
def tracker(url: str) -> Iterator[Tracker]:
    yield from tracker_for(url)


@pytest.fixture(params=["flask", "django"])
def client_of(request: pytest.FixtureRequest) -> Any:
    """``client_of(tracker, **options)``: a WSGI client of the Flask or the Django app."""
    if request.param == "flask":
        yield lambda tracker, use_cookies=True, **options: Client(
            wsgi_apps.flask_app(tracker, **options), use_cookies=use_cookies
        )
        return
    app_for = wsgi_apps.django_wsgi
    # Settings as the ASGI Django tests configure them (once per process, whichever runs
    # first); this app's URLs only within the test.
    framework_apps.django_app(Tracker("dub", transport=MemoryTransport()))
    with override_settings(ROOT_URLCONF="tests.support.wsgi_apps"):
        yield lambda tracker, use_cookies=True, **options: Client(
            app_for(tracker, **options), use_cookies=use_cookies
        )


def set_cookies(response: TestResponse) -> dict[str, str]:
    return {
        c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0]
        for c in response.headers.getlist("Set-Cookie")
    }


def test_a_landing_sets_the_cookie_and_a_signup_lead_arrives_once(
    client_of: Any, tracker: Tracker, provider: FakeProvider
) -> None:
    client = client_of(tracker, cookie_domain=None)
    landing = client.get("/?dub_id=clk_wsgi")
    assert landing.json == {"click_id": "clk_wsgi", "verified": False, "partner": None}
    assert set_cookies(landing) == {"dub_id": "clk_wsgi"}
    assert "Path=/" in landing.headers["Set-Cookie"]
    later = client.get("/")  # the client sends the cookie back
    assert later.json["click_id"] == "clk_wsgi" and "Set-Cookie" not in later.headers
    signup = client.post("/signup?u=ada")
    assert signup.json["status"] == "queued"  # handed to the owner thread's queue
    asyncio.run(tracker.flush(10))
    assert [(lead["clickId"], lead["customerExternalId"]) for lead in provider.leads()] == [
        ("clk_wsgi", "ada")
    ]


def test_signing_verifies_the_click_and_refuses_a_forged_one(
    client_of: Any, tracker: Tracker
) -> None:
    client = client_of(tracker, signing_secrets=wsgi_apps.SECRET)
    landing = client.get("/?dub_id=clk_signed")
    cookies = set_cookies(landing)
    assert set(cookies) == {"dub_id", "dub_id_sig"} and landing.json["verified"] is True
    assert client.get("/").json == {"click_id": "clk_signed", "verified": True, "partner": None}
    client.set_cookie("dub_id", "clk_forged")
    assert client.get("/").json == {"click_id": "clk_forged", "verified": False, "partner": None}


def test_consent_and_gpc_keep_nothing_without_consent(client_of: Any, tracker: Tracker) -> None:
    client = client_of(tracker, consent=lambda c: c.cookies.get("consent") == "yes", honor_gpc=True)
    refused = client.get("/?dub_id=clk_no")
    assert refused.json["click_id"] is None and "Set-Cookie" not in refused.headers
    client.set_cookie("consent", "yes")
    gpc = client.get("/?dub_id=clk_gpc", headers={"sec-gpc": "1"})
    assert gpc.json["click_id"] is None and "Set-Cookie" not in gpc.headers
    given = client.get("/?dub_id=clk_yes")
    assert given.json["click_id"] == "clk_yes" and set_cookies(given) == {"dub_id": "clk_yes"}


def test_an_async_consent_runs_on_the_trackers_loop(client_of: Any, tracker: Tracker) -> None:
    async def consent(connection: Any) -> bool:
        await asyncio.sleep(0)
        return connection.headers.get("x-consent") == "yes"

    client = client_of(tracker, consent=consent)
    assert client.get("/?dub_id=clk_a").json["click_id"] is None
    agreed = client.get("/?dub_id=clk_a", headers={"x-consent": "yes"})
    assert set_cookies(agreed) == {"dub_id": "clk_a"}


def test_first_click_keeps_the_older_cookie(client_of: Any, tracker: Tracker) -> None:
    client = client_of(tracker, attribution_model="first-click")
    client.get("/?dub_id=clk_first")
    second = client.get("/?dub_id=clk_second")
    assert second.json["click_id"] == "clk_first" and "Set-Cookie" not in second.headers


def test_a_forwarded_host_names_the_cookies_domain(client_of: Any, tracker: Tracker) -> None:
    client = client_of(tracker, forwarded_host=True)
    landing = client.get(
        "/?dub_id=clk_fwd",
        headers={"x-forwarded-host": "www.acme.com", "x-forwarded-proto": "https"},
    )
    cookie = landing.headers["Set-Cookie"]
    assert "Domain=.acme.com" in cookie and "Secure" in cookie


def test_a_via_landing_gets_its_click_from_the_provider(
    client_of: Any, fake_links: tuple[FakeProvider, str]
) -> None:
    fake, url = fake_links
    for tracker in tracker_for(url):
        # werkzeug's cookie jar cannot parse the partner cookie's raw JSON (as Dub sets it).
        client = client_of(tracker, use_cookies=False, refer_domain="go.acme.com")
        landing = client.get("/?via=john", headers={"user-agent": BROWSER})
        body = landing.json
        assert body["click_id"] is not None and body["partner"] == "John Doe"
        cookies = set_cookies(landing)
        assert cookies["dub_id"] == body["click_id"] and "dub_partner_data" in cookies
        assert [c.key for c in fake.clicks() if c.id == body["click_id"]] == ["john"]


def test_the_helpers_take_the_environ_and_bad_input_never_fails_a_request(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(get_attribution(environ).click_id)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    client = Client(AttributionMiddleware(app, tracker=tracker))
    client.get("/?dub_id=clk_env")
    with caplog.at_level(logging.WARNING, "asgi_attribution"):
        response = client.get("/?dub_id=" + "x" * 5000, headers={"cookie": "dub_id=\x7f;;="})
    assert response.status_code == 200
    assert seen == ["clk_env", "clk_env"]  # a giant id is none; the earlier cookie remains


def test_the_apps_own_click_cookie_wins(tracker: Tracker) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Set-Cookie", "dub_id=; Max-Age=0")])
        return [b"ok"]

    response = Client(AttributionMiddleware(app, tracker=tracker)).get("/?dub_id=clk_x")
    assert response.headers.getlist("Set-Cookie") == ["dub_id=; Max-Age=0"]


def test_sync_track_lead_with_a_job_tracker_still_works(tracker: Tracker) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    # The owner thread the middleware started serves sync calls of the same process too.
    Client(AttributionMiddleware(app, tracker=tracker)).get("/")
    assert tracker.started and tracker.loop is not None
    result = sync.track_lead(
        None, "Sign up", tracker=tracker, click_id="clk_j", customer_external_id="u_job"
    )
    assert result.status == "queued"


def test_scope_from_environ_reads_what_the_decision_needs() -> None:
    scope = scope_from_environ(
        {
            "REQUEST_METHOD": "GET",
            "QUERY_STRING": "via=john",
            "HTTP_USER_AGENT": BROWSER,
            "HTTP_SEC_FETCH_MODE": "navigate",
            "CONTENT_TYPE": "text/plain",
            "REMOTE_ADDR": "10.0.0.7",
            "REMOTE_PORT": "nan",
            "wsgi.url_scheme": "https",
        }
    )
    assert (b"sec-fetch-mode", b"navigate") in scope["headers"]
    assert (b"content-type", b"text/plain") in scope["headers"]
    assert scope["client"] == ("10.0.0.7", 0) and scope["scheme"] == "https"


def test_a_forked_child_owns_nothing_of_its_parents_loop(tracker: Tracker) -> None:
    """A pre-fork server's worker must not hand events to a copy of the parent's loop."""
    sync.start_owner(tracker, start=True)
    assert tracker.started and tracker.loop is not None
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        os._exit(0 if tracker.loop is None and not tracker.started else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tracker.started and tracker.loop is not None  # the parent's own is untouched


def test_clean_urls_answer_a_landing_303_with_its_cookies(client_of: Any, tracker: Tracker) -> None:
    client = client_of(tracker, cookie_domain=None, clean_urls=True, touchpoints=True)
    landing = client.get("/?dub_id=clk_clean&utm_source=news", headers={"User-Agent": BROWSER})
    assert landing.status_code == 303
    assert landing.headers["Location"] == "./?utm_source=news"
    cookies = set_cookies(landing)
    assert cookies["dub_id"] == "clk_clean" and cookies["attribution_touch"]
    page = client.get("/?utm_source=news")  # the clean URL: the app answers, with the click
    assert page.status_code == 200 and "clk_clean" in page.text
