"""The middleware's hot-path readers agree with the exact ones they stand in for.

``ClickCookies`` (the lazy ``click_id`` read) against ``CookieReader`` plus validation,
``LandingQuery.click`` told where the needle is against the one that searches, and the
landing's Set-Cookie bytes against ``CookiePolicy.header``; and the configurations that take
the plain path against the same requests through the gated one.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_attribution import DUB, PIMMS, AttributionMiddleware, MemoryTransport, Tracker
from asgi_attribution._cookies import ClickCookies, CookiePolicy, CookieReader, valid_click_id
from asgi_attribution._landing import LandingCookies, LandingQuery, cookie_sender
from asgi_attribution._providers import Provider

FAST = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis directory in the working tree
    suppress_health_check=[HealthCheck.too_slow],
)

latin1 = st.text(st.characters(max_codepoint=255), max_size=30)
NAMES = ["dub_id", "dub_partner_data", "pimms_id", "dclid", "xdub_id", "dub_id_", "cm3abc_9", "1"]
SEPARATORS = [";", "; ", " ;", "=", " = ", " ", '"', "\t", "\xa0", "\x85", ",", "\n", "-", "_"]
pieces = st.sampled_from([*NAMES, *SEPARATORS])
cookie_text = st.lists(st.one_of(pieces, latin1), max_size=16).map("".join)


def exact(provider: Provider, header: bytes) -> tuple[str | None, str | None]:
    """What the eager path reads: every named cookie, then the first valid click by name."""
    partner = [provider.partner_cookie] if provider.partner_cookie else []
    names = [*provider.cookie_names, *partner]
    cookies = CookieReader(names).read(header)
    click = None
    for name in provider.cookie_names:
        if name in cookies:
            click = valid_click_id(cookies[name])
            if click and provider.accepts_click_id(click):
                break
            click = None
    return click, cookies.get(provider.partner_cookie) if provider.partner_cookie else None


@FAST
@given(cookie_text, st.sampled_from([DUB, PIMMS]))
def test_click_cookies_agree_with_the_cookie_reader(text: str, provider: Provider) -> None:
    header = text.encode("latin-1")
    clicks = ClickCookies(provider.cookie_names, provider.partner_cookie, provider.accepts_click_id)
    assert clicks.read(header) == exact(provider, header)
    assert clicks.partner(header) == exact(provider, header)[1]


@pytest.mark.parametrize(
    "header",
    [
        b"dub_id=c1",
        b"dub_id=c1; dub_id=c2",
        b" dub_id=c1",
        b"a=1;dub_id=c1",
        b"a=1;  dub_id=c1",
        b"dub_id = c1",
        b"xdub_id=no; dub_id=yes",
        b"dub_id=bad value; dub_id=c2",
        b'dub_id="c1"',
        b"dub_id=c1\n",
        b"dub_id=" + b"a" * 65,
        b"dub_id",
        b"dub_partner_data=%7B%7D; dub_id=c1",
    ],
)
def test_click_cookies_on_the_shapes_around_the_fast_path(header: bytes) -> None:
    clicks = ClickCookies(DUB.cookie_names, DUB.partner_cookie, DUB.accepts_click_id)
    assert clicks.read(header) == exact(DUB, header)


query_text = st.lists(
    st.one_of(
        st.sampled_from(["dub_id=", "pimms_id=", "dub-no-track", "&", "=", "c1", "1", "x"]),
        latin1,
    ),
    max_size=12,
).map("".join)


@FAST
@given(query_text, st.sampled_from([DUB, PIMMS]))
def test_landing_click_at_a_found_needle_agrees(text: str, provider: Provider) -> None:
    query = text.encode("latin-1")
    landing = LandingQuery(provider)
    at = query.find(landing.needle)
    if at >= 0:
        assert landing.click(query, at) == landing.click(query)


@FAST
@given(
    st.sampled_from([b"www.example.com", b"shop.example.co.uk:8443", b"localhost", b"[::1]"]),
    st.booleans(),
    st.sampled_from([CookiePolicy(), CookiePolicy(domain=None, secure=True, httponly=True)]),
)
def test_landing_headers_are_the_policys(host: bytes, https: bool, policy: CookiePolicy) -> None:
    cookies = LandingCookies(DUB, policy)
    scope = {"headers": [], "scheme": "https" if https else "http"}
    expected = policy.header("dub_id", "c1", host=host.decode(), https=https).encode("latin-1")
    for _ in range(2):  # computed, then cached
        assert cookies.headers(scope, "c1", host=host) == ((b"set-cookie", expected),)


@pytest.mark.anyio
async def test_cookie_sender_keeps_the_apps_own_click_cookie() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    sender = cookie_sender(send, [(b"set-cookie", b"dub_id=c1")], (b"dub_id=",))
    own = [(b"Set-Cookie", b'dub_id=""; Max-Age=0')]
    await sender({"type": "http.response.start", "status": 200, "headers": own})
    await sender({"type": "http.response.body", "body": b""})
    assert sent[0]["headers"] == own
    assert sent[1] == {"type": "http.response.body", "body": b""}


async def run(app: AttributionMiddleware, query: bytes, headers: list[Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        attribution = scope["asgi_attribution"]
        seen.update(
            click=attribution.click_id,
            source=attribution.source,
            partner=attribution.partner_raw,
            captured=attribution.captured,
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Any:
        return {"type": "http.request"}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    app.app = inner
    scope = {"type": "http", "scheme": "https", "query_string": query, "headers": headers}
    await app(scope, receive, send)
    seen["set_cookie"] = [v for k, v in sent[0]["headers"] if k == b"set-cookie"]
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["last-click", "first-click"])
@pytest.mark.parametrize(
    ("query", "cookie"),
    [
        (b"", None),
        (b"", b"dub_id=old; dub_partner_data=%7B%7D"),
        (b"dub_id=new&utm=x", None),
        (b"dub_id=new", b"a=1; dub_id=old; dub_partner_data=%7B%7D"),
        (b"dub_id=bad%20id", b"dub_id=old"),
        (b"xdub_id=no&dub_id=new", None),
        (b"dub_id=new&dub-no-track", b"dub_id=old"),
        (b"page=2", b"dub_id=old"),
    ],
)
async def test_the_plain_path_agrees_with_the_gated_one(
    model: Any, query: bytes, cookie: bytes | None
) -> None:
    headers = [(b"host", b"www.example.com")]
    if cookie is not None:
        headers.append((b"cookie", cookie))

    def middleware(**options: Any) -> AttributionMiddleware:
        tracker = Tracker("dub", transport=MemoryTransport())
        return AttributionMiddleware(lambda *a: None, tracker, attribution_model=model, **options)

    plain = middleware()
    gated = middleware(consent=lambda connection: True)  # the eager path, everyone consents
    assert plain._plain and not gated._plain
    assert await run(plain, query, headers) == await run(gated, query, headers)
