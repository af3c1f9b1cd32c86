"""Partner clicks under attack, behind a real nginx: spoofed ``X-Forwarded-For``, a flood of
landings, and provider answers too large for a cookie or for memory.

nginx appends the peer to ``X-Forwarded-For`` (``$proxy_add_x_forwarded_for``), as a proxy in
front of an app does; the fake provider answers ``/track/click`` over a real socket. Each test
counts landings sent, landings served (200), outbound click calls, and landings that failed
(silently lost: a landing the visitor did not get), and asserts none failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_attribution import AttributionMiddleware, Tracker, get_attribution
from asgi_attribution._partners import MAX_PARTNER_COOKIE, PartnerClicks
from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread

from .support.nginx import run_nginx
from .test_partner_clicks import BROWSER, PARTNER, click_requests, landing_app

# nginx appends the peer to X-Forwarded-For, as a proxy in front of an app does.
PROXY = """
    server {{
        listen 127.0.0.1:{ports[0]};
        location / {{
            proxy_pass {upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
"""

LINKS = {
    ("go.acme.com", "john"): {"partner": PARTNER},
    # A partner image of 10 KB: the answer is small enough to read, too large for a cookie.
    ("go.acme.com", "wide"): {"partner": {**PARTNER, "image": "https://cdn.test/" + "a" * 10_000}},
    # 200 KB: too large to read at all.
    ("go.acme.com", "huge"): {"partner": {**PARTNER, "image": "https://cdn.test/" + "a" * 200_000}},
}


@contextmanager
def nginx_in_front(upstream: str, tmp: Path) -> Iterator[str]:
    # The upstream is put in first; run_nginx fills in the port (and reads the doubled braces).
    with run_nginx(PROXY.replace("{upstream}", upstream), tmp) as (port,):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def fake() -> Iterator[tuple[FakeProvider, str]]:
    provider = FakeProvider("dub", links=LINKS, allowed_hostnames=["acme.com"])
    with serve_in_thread(provider) as url:
        yield provider, url


def landings(url: str, n: int, headers: Callable[[int], dict[str, str]]) -> list[httpx.Response]:
    def one(i: int) -> httpx.Response:
        sent = {"User-Agent": f"{BROWSER} v{i}", "Host": "acme.com", "Sec-Fetch-Mode": "navigate"}
        return httpx.get(url, headers={**sent, **headers(i)}, timeout=30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        return list(pool.map(one, range(n)))


def test_spoofed_forwarded_for_values_share_the_proxys_hop_and_its_limit(
    fake: tuple[FakeProvider, str], tmp_path: Path
) -> None:
    provider, api = fake
    clicks = PartnerClicks("dub", base_url=api, refer_domain="go.acme.com", forwarded=True)
    with serve_in_thread(landing_app(clicks)) as site, nginx_in_front(site, tmp_path) as front:
        answers = landings(
            front + "/?via=john", 300, lambda i: {"X-Forwarded-For": f"198.51.{i // 250}.{i % 250}"}
        )
    served = [a for a in answers if a.status_code == 200]
    with_click = [a for a in served if a.json()["click"] is not None]
    row = {
        "sent": 300,
        "served": len(served),
        "clicks_called": len(click_requests(provider)),
        "silently_lost": 300 - len(served),
    }
    print(row)
    # nginx appended 127.0.0.1, the one hop it vouches for: every landing is one client IP.
    assert row == {"sent": 300, "served": 300, "clicks_called": 10, "silently_lost": 0}
    assert len(with_click) == 10


class InFlight(httpx.AsyncHTTPTransport):
    """A real HTTP transport that notes the most requests it ever had in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            response = await super().handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.now -= 1


def test_a_global_cap_bounds_concurrent_and_per_minute_click_calls(
    fake: tuple[FakeProvider, str], caplog: pytest.LogCaptureFixture
) -> None:
    provider, api = fake
    provider.faults = Faults(slow_rate=1.0, slow_seconds=1.0)
    clicks = PartnerClicks(
        "dub",
        base_url=api,
        refer_domain="go.acme.com",
        click_timeout=3.0,
        rate_limit=1000,  # the per-IP limit out of the way: the global caps alone
        max_concurrent_clicks=4,
        max_clicks_per_minute=10,
        transport=(in_flight := InFlight()),
    )
    with serve_in_thread(landing_app(clicks)) as site:
        first = landings(site + "/?via=john", 40, lambda i: {})
        later = [wave(site, w) for w in range(4)]
    answers = first + [a for wave in later for a in wave]
    served = [a for a in answers if a.status_code == 200]
    calls = len(click_requests(provider))
    row = {
        "sent": 56,
        "served": len(served),
        "clicks_called": calls,
        "silently_lost": 56 - len(served),
    }
    print(row)
    assert row["served"] == 56 and row["silently_lost"] == 0
    assert in_flight.most == 4  # reached, never passed
    assert calls <= 10  # the minute's cap
    assert all(a.json()["elapsed"] < 3.0 + 1.0 for a in served)  # never held past the timeout
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "skipped:" in r.getMessage()
    ]
    assert len(warnings) == 1


def wave(site: str, w: int) -> list[httpx.Response]:
    """Four landings of new visitors."""
    return landings(site + "/?via=john", 4, lambda i: {"User-Agent": f"{BROWSER} w{w}-{i}"})


def site_with_middleware(api: str) -> Any:
    async def page(request: Request) -> JSONResponse:
        attribution = get_attribution(request)
        return JSONResponse({"click_id": attribution.click_id})

    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(
        AttributionMiddleware,
        tracker=Tracker("dub", base_url=api, api_key="dub_test_key"),
        refer_domain="go.acme.com",
        forwarded_host=True,
        click_timeout=3.0,
    )
    return app


def test_partner_data_too_large_for_a_cookie_or_for_memory_still_lands(
    fake: tuple[FakeProvider, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    provider, api = fake
    caplog.set_level(logging.INFO, logger="asgi_attribution")
    with (
        serve_in_thread(site_with_middleware(api)) as site,
        nginx_in_front(site, tmp_path) as front,
    ):
        wide = landings(front + "/?via=wide", 3, lambda i: {})
        huge = landings(front + "/?via=huge", 1, lambda i: {})[0]
    for answer in wide:
        assert answer.status_code == 200  # before: nginx answered 502 to the 10 KB Set-Cookie
        cookies = answer.headers.get_list("set-cookie")
        assert answer.json()["click_id"] and any(c.startswith("dub_id=") for c in cookies)
        assert not any(c.startswith("dub_partner_data=") for c in cookies)
    assert huge.status_code == 200 and huge.json()["click_id"] is None
    too_wide = [r for r in caplog.records if "not set as a cookie" in r.getMessage()]
    assert [r.levelno for r in too_wide] == [logging.WARNING, logging.INFO, logging.INFO]
    assert str(MAX_PARTNER_COOKIE) in too_wide[0].getMessage()
    assert any("answer over" in r.getMessage() for r in caplog.records)
    row = {
        "sent": 4,
        "served": 4,
        "clicks_called": len(click_requests(provider)),
        "silently_lost": 0,
    }
    print(row)
