"""``?via=`` partner links landed from the server: the middleware asks the provider for a
click, through a real socket to the fake provider, and lands it like a ``?dub_id=``."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_attribution import AttributionMiddleware, Tracker, get_attribution
from asgi_attribution.testing import FakeProvider, serve_in_thread

from .support.asgi import KEY, client_for

pytestmark = pytest.mark.anyio

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
PARTNER = {"id": "pn_1", "name": "John Doe", "image": "https://img.example/j d.png"}


@pytest.fixture(scope="module")
def fake_links() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(
        "dub",
        api_key=KEY,
        links={
            ("go.acme.com", "john"): {"partner": PARTNER, "discount": {"amount": 20}},
            ("go.acme.com", "jane"): {"partner": {"id": "pn_2", "name": "Jane Roe"}},
        },
    )
    with serve_in_thread(fake) as url:
        yield fake, url


def site(base_url: str, **options: Any) -> Any:
    async def landing(request: Request) -> Response:
        a = get_attribution(request)
        return JSONResponse(
            {
                "click_id": a.click_id,
                "partner": a.partner.name if a.partner else None,
                "discount": a.discount.amount if a.discount else None,
            }
        )

    tracker = Tracker("dub", api_key=KEY, base_url=base_url)
    return AttributionMiddleware(
        Starlette(routes=[Route("/", landing)]),
        tracker,
        refer_domain="go.acme.com",
        **options,
    )


def set_cookies(response: Any) -> dict[str, str]:
    return {
        c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0]
        for c in response.headers.get_list("set-cookie")
    }


async def test_a_via_landing_sets_the_click_and_partner_cookies(
    fake_links: tuple[FakeProvider, str],
) -> None:
    fake, url = fake_links
    async with client_for(site(url), base_url="https://acme.com") as client:
        response = await client.get(
            "/?via=john", headers={"user-agent": BROWSER, "referer": "https://news.example/"}
        )
    body = response.json()
    cookies = set_cookies(response)
    assert body["click_id"] is not None and cookies["dub_id"] == body["click_id"]
    assert body["partner"] == "John Doe" and body["discount"] == 20
    assert "dub_partner_data" in cookies
    (click,) = [c for c in fake.clicks() if c.id == body["click_id"]]
    assert click.user_agent == BROWSER  # forwarded verbatim
    assert click.key == "john" and click.url == "https://acme.com/?via=john"


async def test_a_via_link_with_its_own_click_id_records_no_second_click(
    fake_links: tuple[FakeProvider, str],
) -> None:
    fake, url = fake_links
    before = len(fake.clicks())
    async with client_for(site(url), base_url="https://acme.com") as client:
        response = await client.get("/?via=john&dub_id=clk_own", headers={"user-agent": BROWSER})
    assert response.json()["click_id"] == "clk_own"
    assert len(fake.clicks()) == before


async def test_a_bot_gets_no_click(fake_links: tuple[FakeProvider, str]) -> None:
    fake, url = fake_links
    before = len(fake.clicks())
    async with client_for(site(url), base_url="https://acme.com") as client:
        response = await client.get("/?via=john", headers={"user-agent": "python-httpx/0.28"})
    assert response.json()["click_id"] is None
    assert "set-cookie" not in response.headers
    assert len(fake.clicks()) == before


async def test_an_unreachable_click_route_still_serves_the_landing_in_time() -> None:
    # A listening socket that never answers: the call can only end by its timeout.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        started = time.monotonic()
        async with client_for(site(url, click_timeout=0.3), base_url="https://acme.com") as c:
            response = await c.get("/?via=john", headers={"user-agent": BROWSER})
        elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.json()["click_id"] is None
    assert "set-cookie" not in response.headers
    assert elapsed < 0.3 + 2.0  # bounded by click_timeout (generous margin: not a speed test)


async def test_via_is_read_after_the_configured_params_as_dubs_script_does(
    fake_links: tuple[FakeProvider, str],
) -> None:
    # Dub's script reads [...custom, "via"]: a site that adds ?ref= keeps its ?via= links.
    fake, url = fake_links
    app = site(url, click_query_params=("ref",))
    landings = ["/?via=john", "/?ref=jane&via=john", "/?ref=&via=john", "/?via=jane&ref=john"]
    before = len(fake.clicks())
    async with client_for(app, base_url="https://acme.com") as client:
        # One visitor each (Dub's and the fake's rule: one browser and IP share a link's click).
        answers = [
            (await client.get(path, headers={"user-agent": f"{BROWSER} v{n}"})).json()
            for n, path in enumerate(landings)
        ]
    clicks = fake.clicks()[before:]
    assert [c.key for c in clicks] == ["john", "jane", "john", "john"]
    assert [a["partner"] for a in answers] == ["John Doe", "Jane Roe", "John Doe", "John Doe"]
    assert [a["click_id"] for a in answers] == [c.id for c in clicks]
