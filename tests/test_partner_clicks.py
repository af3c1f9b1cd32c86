"""Server-side partner clicks over real sockets: a landing app calls the fake ``/track/click``.

The landing app is served by uvicorn, so ``click_for`` sees a real server's scope (client IP,
raw path, headers); the fake provider records what Dub would have received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from asgi_attribution._attribution import parse_partner_data
from asgi_attribution._partners import (
    PartnerClick,
    PartnerClicks,
    is_bot_user_agent,
    partner_data_cookie,
)
from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PARTNER = {
    "id": "pn_1",
    "name": "Zoë O'Brien & Co",
    "image": "https://cdn.test/a b.png?x=1",
    "groupId": "grp_1",
    "tenantId": None,
}
DISCOUNT = {"id": "disc_1", "amount": 20, "type": "percentage", "maxDuration": 3}
LINKS = {
    ("go.acme.com", "john"): {"partner": PARTNER, "discount": DISCOUNT},
    ("go.acme.com", "jane"): {"partner": {**PARTNER, "id": "pn_2", "name": "Jane"}},
    ("go.acme.com", "plain"): {},
}


def landing_app(clicks: PartnerClicks) -> Any:
    """Answers each request with what ``click_for`` gave and how long it took."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await clicks.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        started = time.monotonic()
        click = await clicks.click_for(scope)
        elapsed = time.monotonic() - started
        body = json.dumps({"click": asdict(click) if click else None, "elapsed": elapsed})
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})

    return app


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeProvider, str]]:
    provider = FakeProvider("dub", links=LINKS, allowed_hostnames=["acme.com"])
    with serve_in_thread(provider) as url:
        yield provider, url


@pytest.fixture
def provider(fake: tuple[FakeProvider, str]) -> FakeProvider:
    fake[0].faults = Faults()
    fake[0].reset()
    return fake[0]


@pytest.fixture
def api(fake: tuple[FakeProvider, str], provider: FakeProvider) -> str:
    return fake[1]


def land(
    url: str, path: str, *, user_agent: str = BROWSER, method: str = "GET", **headers: str
) -> dict[str, Any]:
    sent = {"User-Agent": user_agent, "Host": "acme.com", "Sec-Fetch-Mode": "navigate"}
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    response = httpx.request(method, url + path, headers=sent, timeout=10)
    assert response.status_code == 200
    answer: dict[str, Any] = response.json() if method != "HEAD" else {"click": None}
    return answer


def click_requests(provider: FakeProvider) -> list[Any]:
    return [r for r in provider.requests if r.path == "/track/click"]


def test_a_via_landing_records_the_click_with_the_visitors_user_agent(
    api: str, provider: FakeProvider
) -> None:
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com")
    with serve_in_thread(landing_app(clicks)) as site:
        answer = land(site, "/pricing?via=john&utm_source=blog", Referer="https://blog.test/p")
    click = answer["click"]
    [recorded] = provider.clicks()
    assert click["click_id"] == recorded.id and click["reused"] is False
    assert recorded.user_agent == BROWSER
    assert (recorded.domain, recorded.key) == ("go.acme.com", "john")
    assert recorded.url == "http://acme.com/pricing?via=john&utm_source=blog"
    assert recorded.referrer == "https://blog.test/p"
    [request] = click_requests(provider)
    assert request.headers["origin"] == "http://acme.com"
    assert request.headers["referer"] == "http://acme.com/pricing?via=john&utm_source=blog"
    # The partner cookie is the script's format, and the package's reader gets the partner back.
    cookie = click["partner_data_cookie"]
    assert cookie.startswith('{"clickId":"' + recorded.id + '","partner":{"id":"pn_1","name":"Zo')
    assert "Zo%C3%AB%20O'Brien%20%26%20Co" in cookie
    data = parse_partner_data(cookie)
    assert data is not None and data.partner is not None and data.discount is not None
    assert data.clickId == recorded.id
    assert (data.partner.name, data.partner.image) == (PARTNER["name"], PARTNER["image"])
    assert (data.discount.amount, data.discount.maxDuration) == (20.0, 3)


def test_a_link_without_a_partner_sets_no_partner_cookie(api: str, provider: FakeProvider) -> None:
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com")
    with serve_in_thread(landing_app(clicks)) as site:
        click = land(site, "/?via=plain")["click"]
    assert click["partner_data_cookie"] is None and len(provider.clicks()) == 1


def test_via_with_a_click_id_records_no_second_click(api: str, provider: FakeProvider) -> None:
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com")
    with serve_in_thread(landing_app(clicks)) as site:
        answers = [
            land(site, "/?via=john&dub_id=clk123"),
            land(site, "/?dub_id=clk123&via=john"),
            land(site, "/?via=john&dub-no-track=1"),
        ]
    assert [a["click"] for a in answers] == [None, None, None]
    assert click_requests(provider) == []


def test_requests_that_are_no_navigation_make_no_click(api: str, provider: FakeProvider) -> None:
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com")
    with serve_in_thread(landing_app(clicks)) as site:
        answers = [
            land(site, "/?via=john", method="HEAD"),
            land(site, "/?via=john", user_agent="python-requests/2.32"),
            land(site, "/?via=john", user_agent="curl/8.5.0"),
            land(site, "/?via=john", user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)"),
            land(site, "/?via=john", Sec_Purpose="prefetch;prerender"),
            land(site, "/?via=john", Purpose="prefetch"),
            land(site, "/?via=john", Sec_Fetch_Mode="no-cors"),
            land(site, "/?via=" + "k" * 256),
            land(site, "/?via=%0Ajohn"),
            land(site, "/?ref=john"),
            land(site, "/"),
        ]
    assert [a["click"] for a in answers] == [None] * len(answers)
    assert click_requests(provider) == []


def test_the_first_non_empty_parameter_gives_the_key(api: str, provider: FakeProvider) -> None:
    clicks = PartnerClicks(
        "dub", base_url=api, refer_domain="go.acme.com", click_query_params=("via", "ref")
    )
    with serve_in_thread(landing_app(clicks)) as site:
        click = land(site, "/?via=&ref=jane")["click"]
        without_sec_fetch = httpx.get(
            f"{site}/?ref=john", headers={"User-Agent": BROWSER, "Host": "acme.com"}
        ).json()["click"]  # an older browser: no Sec-Fetch headers at all
    assert click["key"] == "jane" and without_sec_fetch["key"] == "john"
    assert [c.key for c in provider.clicks()] == ["jane", "john"]


def test_repeated_landings_reuse_the_click_for_an_hour(api: str, provider: FakeProvider) -> None:
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com", reuse_for=0.5)
    with serve_in_thread(landing_app(clicks)) as site:
        first = land(site, "/?via=john")["click"]
        again = land(site, "/pricing?via=john")["click"]
        other_browser = land(site, "/?via=john", user_agent=BROWSER + " Edg/1")["click"]
        other_link = land(site, "/?via=jane")["click"]
        time.sleep(0.6)
        later = land(site, "/?via=john")["click"]
    assert again["click_id"] == first["click_id"] and again["reused"] is True
    assert again["partner_data_cookie"] == first["partner_data_cookie"]
    assert other_browser["click_id"] != first["click_id"]
    assert other_link["click_id"] != first["click_id"]
    assert later["reused"] is False
    assert len(click_requests(provider)) == 4  # first, other browser, other link, later


def test_a_client_ip_is_rate_limited(api: str, provider: FakeProvider) -> None:
    clicks = PartnerClicks(
        "dub", base_url=api, refer_domain="go.acme.com", rate_limit=2, forwarded=True
    )
    with serve_in_thread(landing_app(clicks)) as site:
        same_ip = [
            land(site, "/?via=john", user_agent=f"{BROWSER} n{i}", X_Forwarded_For="203.0.113.9")
            for i in range(3)
        ]
        reused = land(site, "/?via=john", user_agent=f"{BROWSER} n0", X_Forwarded_For="203.0.113.9")
        other_ip = land(site, "/?via=john", X_Forwarded_For="198.51.100.4, 10.0.0.1")
    assert [a["click"] is not None for a in same_ip] == [True, True, False]
    assert reused["click"]["reused"] is True  # a known visitor is not a new click
    assert other_ip["click"] is not None
    assert len(click_requests(provider)) == 3


def test_an_unreachable_api_leaves_the_landing_on_time() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clicks = PartnerClicks(
        "dub", base_url=f"http://127.0.0.1:{port}", refer_domain="go.acme.com", click_timeout=0.5
    )
    with serve_in_thread(landing_app(clicks)) as site:
        answer = land(site, "/?via=john")
    assert answer["click"] is None and answer["elapsed"] < 0.5 + 0.25


def test_a_hanging_api_is_cut_at_click_timeout(api: str, provider: FakeProvider) -> None:
    provider.faults = Faults(slow_rate=1.0, slow_seconds=5.0)
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com", click_timeout=0.3)
    with serve_in_thread(landing_app(clicks)) as site:
        started = time.monotonic()
        answer = land(site, "/?via=john")
        total = time.monotonic() - started
    assert answer["click"] is None
    assert answer["elapsed"] < 0.3 + 0.2 and total < 0.3 + 1.0


def test_errors_give_no_click_and_a_forbidden_origin_warns_once(
    api: str, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com")
    caplog.set_level(logging.INFO, "asgi_attribution")
    with serve_in_thread(landing_app(clicks)) as site:
        unknown = land(site, "/?via=nobody")
        forbidden = [land(site, f"/?via=john&n={i}", Host="evil.test") for i in range(2)]
        provider.faults = Faults(error_rate=1.0)
        failing = land(site, "/?via=jane")
    assert unknown["click"] is None and failing["click"] is None
    assert [f["click"] for f in forbidden] == [None, None]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("allowed hostnames" in r.getMessage() for r in warnings) == 1
    assert any("HTTP 503" in r.getMessage() for r in warnings)
    assert any("404" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_pimms_has_no_partner_cookie() -> None:
    pimms = FakeProvider("pimms", links=LINKS)
    with serve_in_thread(pimms) as api:
        clicks = PartnerClicks("pimms", base_url=api, refer_domain="go.acme.com")
        with serve_in_thread(landing_app(clicks)) as site:
            placeholder = land(site, "/?via=john&pimms_id=1")["click"]  # the link's placeholder
            own = land(site, "/?via=john&pimms_id=clk9")["click"]
    assert own is None
    assert placeholder is not None and placeholder["partner_data_cookie"] is None
    assert [c.key for c in pimms.clicks()] == ["john"]


def test_one_client_per_event_loop(api: str, provider: FakeProvider) -> None:
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com", reuse_for=0)
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "https",
        "path": "/",
        "query_string": b"via=john",
        "client": ("192.0.2.1", 1234),
        "headers": [(b"host", b"acme.com"), (b"user-agent", BROWSER.encode())],
    }

    async def twice() -> PartnerClick | None:
        await clicks.click_for(scope)
        try:
            return await clicks.click_for(scope)
        finally:
            await clicks.aclose()  # as on lifespan shutdown

    async def once() -> PartnerClick | None:
        try:
            return await clicks.click_for(scope)
        finally:
            await clicks.aclose()

    first = asyncio.run(twice())
    second = asyncio.run(once())  # another loop: a new client
    assert first is not None and second is not None
    assert len(click_requests(provider)) == 3


def test_partner_cookie_round_trips_even_with_characters_a_cookie_cannot_hold() -> None:
    answer = {
        "clickId": "c1",
        "partner": {"id": "pn;1", "name": "Åsa; Ltd", "image": None, "tenantId": "t é"},
        "discount": None,
    }
    cookie = partner_data_cookie(answer)
    assert cookie is not None and cookie.startswith("%7B")
    assert ";" not in cookie and cookie.isascii()
    data = parse_partner_data(cookie)
    assert data is not None and data.partner is not None
    assert (data.partner.id, data.partner.name, data.partner.tenantId) == (
        "pn;1",
        "Åsa; Ltd",
        "t é",
    )


def test_bot_rule_and_configuration_errors() -> None:
    assert is_bot_user_agent("Go-http-client/1.1") and is_bot_user_agent("node-fetch/1.0")
    assert is_bot_user_agent("") and is_bot_user_agent(None)
    assert not is_bot_user_agent(BROWSER)
    with pytest.raises(ValueError, match="refer_domain"):
        PartnerClicks("dub", refer_domain="https://go.acme.com/")
    with pytest.raises(ValueError, match="click_timeout"):
        PartnerClicks("dub", refer_domain="go.acme.com", click_timeout=0)
    with pytest.raises(ValueError, match="click_query_params"):
        PartnerClicks("dub", refer_domain="go.acme.com", click_query_params=())
    assert PartnerClicks(
        "dub", refer_domain="go.acme.com", click_query_params="ref"
    ).click_query_params == ("ref", "via")


def test_the_client_ip_is_the_rightmost_untrusted_hop() -> None:
    def scope(peer: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"client": (peer, 4000), "headers": list(headers)}

    xff = (b"x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.0.0.3")
    one = PartnerClicks("dub", refer_domain="go.acme.com", forwarded=True)
    chain = PartnerClicks(
        "dub", refer_domain="go.acme.com", forwarded=True, forwarded_allow_ips="10.0.0.0/8"
    )
    every = PartnerClicks(
        "dub", refer_domain="go.acme.com", forwarded=True, forwarded_allow_ips="*"
    )
    assert one.client_ip(scope("10.0.0.2", xff)) == "10.0.0.3"  # the hop the peer appended
    assert chain.client_ip(scope("10.0.0.2", xff)) == "203.0.113.9"
    assert chain.client_ip(scope("192.0.2.1", xff)) == "192.0.2.1"  # an untrusted peer
    assert every.client_ip(scope("10.0.0.2", xff)) == "6.6.6.6"
    split = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"203.0.113.9")]
    assert one.client_ip(scope("10.0.0.2", *split)) == "203.0.113.9"  # repeated headers, in order
    forwarded = (b"forwarded", b'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https')
    assert one.client_ip(scope("10.0.0.2", forwarded, xff)) == "2001:db8::7"  # Forwarded first
    assert one.client_ip(scope("10.0.0.2")) == "10.0.0.2"
    with pytest.raises(ValueError, match="forwarded_allow_ips"):
        PartnerClicks("dub", refer_domain="go.acme.com", forwarded_allow_ips="10.0.0.0/33")
    with pytest.raises(ValueError, match="max_concurrent_clicks"):
        PartnerClicks("dub", refer_domain="go.acme.com", max_concurrent_clicks=0)
