"""The middleware's readers against independent oracles, and its options through one path.

The cookie reader against Starlette's parser (one cookie at a time, the first of duplicates
kept) plus validation; a landing's Set-Cookie bytes against ``CookiePolicy.header``; the
cookie read deferred until the app asks; and the same requests through the lazy
configuration and the eager ones (consent, signing), which must agree on what they share.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import cookie_parser

from asgi_attribution import DUB, PIMMS, AttributionMiddleware, MemoryTransport, Tracker
from asgi_attribution._cookies import CookiePolicy, CookieReader, valid_click_id
from asgi_attribution._landing import LandingCookies, cookie_sender
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


def starlette_reads(provider: Provider, header: bytes) -> tuple[str | None, str | None]:
    """Starlette's parser, one cookie at a time (first of duplicates), then validation."""
    cookies: dict[str, str] = {}
    for piece in header.decode("latin-1").split(";"):
        for key, value in cookie_parser(piece).items():
            cookies.setdefault(key, value)
    click = None
    for name in provider.cookie_names:
        candidate = valid_click_id(cookies.get(name))
        if candidate is not None and provider.accepts_click_id(candidate):
            click = candidate
            break
    partner = cookies.get(provider.partner_cookie) if provider.partner_cookie else None
    return click, partner


def reader_for(provider: Provider) -> CookieReader:
    return CookieReader(
        provider.cookie_names, partner=provider.partner_cookie, accepts=provider.accepts_click_id
    )


def read(provider: Provider, header: bytes) -> tuple[str | None, str | None]:
    reader = reader_for(provider)
    cookies = reader.read(header)
    partner = cookies.get(provider.partner_cookie) if provider.partner_cookie else None
    return reader.click_id(cookies), partner


@FAST
@given(cookie_text, st.sampled_from([DUB, PIMMS]))
def test_the_cookie_reader_agrees_with_starlettes_parser(text: str, provider: Provider) -> None:
    header = text.encode("latin-1")
    assert read(provider, header) == starlette_reads(provider, header)


@pytest.mark.parametrize(
    ("provider", "header", "click"),
    [
        (DUB, b"dub_id=c1", "c1"),
        (DUB, b"dub_id=c1; dub_id=c2", "c1"),  # the first of duplicates, as the scripts read
        (DUB, b" dub_id=c1", "c1"),
        (DUB, b"a=1;  dub_id=c1", "c1"),
        (DUB, b"dub_id = c1", "c1"),
        (DUB, b"xdub_id=no; dub_id=yes", "yes"),
        (DUB, b"dub_id=bad value; dub_id=c2", None),  # the first is the one, and it is bad
        (DUB, b'dub_id="c1"', "c1"),
        (DUB, b"dub_id=" + b"a" * 65, None),
        (DUB, b"dub_id", None),
        (DUB, b"dub_id=c1; Path=/; Domain=x", "c1"),
        (PIMMS, b"pimms_id=1; dclid=legacy", "legacy"),  # a placeholder is no click
        (PIMMS, b"dclid=legacy; pimms_id=new", "new"),  # the current name first
    ],
)
def test_the_cookie_reader_on_the_usual_and_odd_shapes(
    provider: Provider, header: bytes, click: str | None
) -> None:
    assert read(provider, header)[0] == click == starlette_reads(provider, header)[0]


@FAST
@given(
    st.sampled_from(["www.example.com", "shop.example.co.uk:8443", "localhost", "[::1]"]),
    st.booleans(),
    st.sampled_from([CookiePolicy(), CookiePolicy(domain=None, secure=True, httponly=True)]),
)
def test_landing_headers_are_the_policys(host: str, https: bool, policy: CookiePolicy) -> None:
    cookies = LandingCookies(DUB, policy)
    scope = {"headers": [(b"host", host.encode())], "scheme": "https" if https else "http"}
    expected = policy.header("dub_id", "c1", host=host, https=https).encode("latin-1")
    for _ in range(2):  # computed, then cached by the policy
        assert cookies.headers(scope, "c1") == ((b"set-cookie", expected),)


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


@pytest.mark.anyio
async def test_cookie_sender_keeps_headers_given_as_an_iterator() -> None:
    """ASGI allows any iterable of headers: the app's own are kept beside ours."""
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    sender = cookie_sender(send, [(b"set-cookie", b"dub_id=c1")], (b"dub_id=",))
    own = [(b"content-type", b"text/plain"), (b"set-cookie", b"session=s1")]
    await sender({"type": "http.response.start", "status": 200, "headers": iter(own)})
    assert sent[0]["headers"] == [*own, (b"set-cookie", b"dub_id=c1")]


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
    # The click cookie (the signed companion, with signing, is the eager path's own).
    seen["set_cookie"] = [
        v for k, v in sent[0]["headers"] if k == b"set-cookie" and not v.startswith(b"dub_id_sig")
    ]
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
        (b"", b"dub_id=bad id; dub_id=c2"),
    ],
)
@pytest.mark.parametrize(
    "eager",
    [
        {"consent": lambda connection: True},  # everyone consents
        {"honor_gpc": True},  # no Sec-GPC header sent
        {"signing_secrets": "a-long-random-secret"},
    ],
    ids=["consent", "gpc", "signing"],
)
async def test_the_lazy_read_agrees_with_the_eager_one(
    model: Any, query: bytes, cookie: bytes | None, eager: dict[str, Any]
) -> None:
    headers = [(b"host", b"www.example.com")]
    if cookie is not None:
        headers.append((b"cookie", cookie))

    def middleware(**options: Any) -> AttributionMiddleware:
        tracker = Tracker("dub", transport=MemoryTransport())
        return AttributionMiddleware(lambda *a: None, tracker, attribution_model=model, **options)

    assert await run(middleware(), query, headers) == await run(middleware(**eager), query, headers)


class CountingReader(CookieReader):
    reads = 0

    def read(self, header: bytes) -> dict[str, str]:
        CountingReader.reads += 1
        return super().read(header)


@pytest.mark.anyio
@pytest.mark.parametrize(("asks", "reads"), [(False, 0), (True, 1)])
async def test_cookies_are_read_only_when_the_app_asks(asks: bool, reads: int) -> None:
    middleware = AttributionMiddleware(lambda *a: None, Tracker("dub", transport=MemoryTransport()))
    middleware._reader = CountingReader(DUB.cookie_names, partner=DUB.partner_cookie)
    CountingReader.reads = 0
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if asks:
            # Asked twice, read once.
            seen.extend([scope["asgi_attribution"].click_id, scope["asgi_attribution"].source])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Any:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        pass

    middleware.app = app
    headers = [(b"host", b"www.example.com"), (b"cookie", b"a=1; dub_id=c1")]
    await middleware({"type": "http", "query_string": b"", "headers": headers}, receive, send)
    assert CountingReader.reads == reads
    assert seen == (["c1", "cookie"] if asks else [])
