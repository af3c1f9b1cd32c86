"""A landing: the click id in the URL, and our cookies added to the app's own response.

:class:`LandingQuery` reads the provider's click id from the query string as its browser script
does; :class:`LandingCookies` builds the ``Set-Cookie`` headers of a landing; :func:`cookie_sender`
appends them to the response the app sends, unless the app set or deleted the click cookie
itself. :class:`TouchQuery` reads a campaign touch (UTM tags, ad click ids) from a navigation
landing, for the touchpoints cookie.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from starlette.types import Message, Scope, Send

from ._cookies import CookiePolicy, host_of, is_https, valid_click_id
from ._providers import Provider
from ._signing import ClickSigner

__all__ = [
    "TOUCH_PARAMS",
    "Header",
    "LandingCookies",
    "LandingQuery",
    "TouchQuery",
    "app_decided",
    "cookie_sender",
]


Header = tuple[bytes, bytes]


class LandingQuery:
    """Reads the provider's click id from a landing's query string, as its script would.

    The first occurrence wins (``URLSearchParams.get``); the provider's no-track parameter
    anywhere means no click; a malformed id or a link placeholder (PIMMS' ``1``) is none.

    Example:
        >>> LandingQuery(DUB).click(b"utm=x&dub_id=clk1&dub_id=clk2")
        'clk1'
        >>> LandingQuery(DUB).click(b"dub_id=clk1&dub-no-track") is None
        True
    """

    __slots__ = ("_no_track", "_param", "_where", "needle", "provider")

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._param = provider.query_param
        self._no_track = provider.no_track_param
        #: Bytes whose absence from the query means no landing (a cheap first test).
        self.needle = provider.query_param.encode() + b"="
        self._where = f"query {provider.query_param}"

    def click(self, query: bytes) -> str | None:
        """The click id in ``query`` (the raw query string), or ``None``.

        Read as ``urllib.parse.parse_qsl(..., keep_blank_values=True)`` reads it, without
        unquoting the parameters that need none (a landing's usually do not).
        """
        text = query.decode("latin-1")
        quoted = "%" in text or "+" in text
        value = None
        for pair in text.split("&"):
            key, _, given = pair.partition("=")
            if quoted:
                key = unquote_plus(key, errors="replace")
                given = unquote_plus(given, errors="replace")
            if key == self._no_track:
                return None
            if key == self._param and value is None:
                value = given
        click = valid_click_id(value, where=self._where)
        # A placeholder (PIMMS' `?pimms_id=1`) never overwrites a real click.
        return click if click is not None and self.provider.accepts_click_id(click) else None


class LandingCookies:
    """The ``Set-Cookie`` headers of a landing: the click cookie, its signed companion (with a
    signer) and the partner cookie (with partner data), for the request's host and scheme.

    With ``forwarded=True`` the host and scheme are the proxy's (``Forwarded`` or
    ``X-Forwarded-Host`` / ``X-Forwarded-Proto``).

    Example:
        >>> cookies = LandingCookies(DUB, CookiePolicy(domain=None))
        >>> cookies.headers({"headers": [(b"host", b"shop.example.com")], "scheme": "https"}, "c1")
        ((b'set-cookie', b'dub_id=c1; Max-Age=7776000; Path=/; SameSite=Lax; Secure'),)
    """

    __slots__ = ("_click", "_forwarded", "_name", "_partner", "_policy", "_signed", "_signer")

    def __init__(
        self,
        provider: Provider,
        policy: CookiePolicy,
        signer: ClickSigner | None = None,
        *,
        forwarded: bool = False,
    ) -> None:
        self._name = provider.cookie_name
        self._partner = provider.partner_cookie
        self._policy = policy
        self._signer = signer
        # The companion is HttpOnly: page scripts (the provider's included) never need it.
        self._signed = (provider.cookie_name + "_sig", replace(policy, httponly=True))
        self._forwarded = forwarded
        # The click cookie's "name=" and, by raw Host header and scheme, its attributes as
        # bytes: the usual landing then decodes, formats and encodes nothing but the click id.
        self._click: tuple[bytes, dict[tuple[bytes, object], bytes]] = (
            self._name.encode() + b"=",
            {},
        )

    def headers(
        self, scope: Scope, click_id: str, partner_data: str | None = None
    ) -> tuple[Header, ...]:
        """The headers for a landing on ``click_id`` (validated) in the request ``scope``."""
        if self._signer is not None or partner_data is not None or self._forwarded:
            return self._each(scope, click_id, partner_data)
        # The usual landing: the click cookie alone, its attributes looked up by the raw Host
        # header and scheme.
        prefix, known = self._click
        host = b""
        for name, value in scope["headers"]:
            if name == b"host":  # usually the first header
                host = value
                break
        key = (host, scope.get("scheme"))
        attributes = known.get(key)
        if attributes is None:
            attributes = self._policy.attributes(host_of(scope), is_https(scope)).encode("latin-1")
            if len(host) <= 260:  # as the policy's own cache: no hostile giants, no flood
                if len(known) >= 256:
                    known.clear()
                known[key] = attributes
        return ((b"set-cookie", prefix + click_id.encode() + attributes),)

    def _each(self, scope: Scope, click_id: str, partner_data: str | None) -> tuple[Header, ...]:
        """Each cookie of a landing, built in turn (signed, partner or behind a proxy)."""
        host = host_of(scope, forwarded=self._forwarded)
        https = is_https(scope, forwarded=self._forwarded)
        cookies = [self._policy.header(self._name, click_id, host=host, https=https)]
        if self._signer is not None:
            # The server saw this click arrive: vouch for it, and say when.
            name, policy = self._signed
            token = self._signer.sign(click_id)
            cookies.append(policy.header(name, token, host=host, https=https))
        if partner_data is not None and self._partner is not None:
            cookies.append(self._policy.header(self._partner, partner_data, host=host, https=https))
        return tuple((b"set-cookie", cookie.encode("latin-1")) for cookie in cookies)


#: The query parameters a touch keeps (with the provider's click id); any other is never kept.
TOUCH_PARAMS = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "ttclid",
    "msclkid",
    "li_fat_id",
    "twclid",
)

# Bytes one of which a touch landing's query must hold: a cheap first test, as LandingQuery's.
_TOUCH_NEEDLES = (b"utm_", b"clid=", b"braid=", b"li_fat_id=")


class TouchQuery:
    """Reads a touch from a navigation landing: the listed parameters, the provider's click id,
    the referrer's host (another site's only), the landing path and the time.

    Only a GET the browser navigates to (``Sec-Fetch-Mode: navigate`` when the header is sent)
    is a landing; the provider's no-track parameter means no touch. Values are cut to 100
    characters; ``clock`` exists for tests.

    Example:
        >>> scope = {"type": "http", "method": "GET", "path": "/pricing",
        ...          "query_string": b"utm_source=news&x=1&gclid=g1",
        ...          "headers": [(b"host", b"shop.com"), (b"referer", b"https://t.co/a")]}
        >>> TouchQuery(DUB, clock=lambda: 7).touch(scope)
        {'time': 7, 'path': '/pricing', 'referrer': 't.co', 'utm_source': 'news', 'gclid': 'g1'}
    """

    __slots__ = ("_clock", "_forwarded", "_landing", "_needles")

    def __init__(
        self,
        provider: Provider,
        *,
        forwarded: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._landing = LandingQuery(provider)
        self._needles = (*_TOUCH_NEEDLES, self._landing.needle)
        self._forwarded = forwarded
        self._clock = clock

    def touch(self, scope: Scope) -> dict[str, Any] | None:
        """The touch ``scope`` lands with (``time``, ``path``, then what it has), or ``None``."""
        query: bytes = scope.get("query_string", b"")
        if not query or not any(needle in query for needle in self._needles):
            return None  # most requests: no campaign in the URL
        if scope["type"] != "http" or scope.get("method") != "GET" or not _navigates(scope):
            return None
        provider = self._landing.provider
        found: dict[str, str] = {}
        given = None  # the click id: the first occurrence, as LandingQuery reads it
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key == provider.no_track_param:
                return None
            if key in TOUCH_PARAMS and value and key not in found:
                found[key] = value[:100]
            elif key == provider.query_param and given is None:
                given = value
        click = valid_click_id(given, where=f"query {provider.query_param}")
        if click is not None and not provider.accepts_click_id(click):
            click = None
        if not found and click is None:
            return None
        touch: dict[str, Any] = {"time": int(self._clock()), "path": str(scope["path"])[:100]}
        referrer = _other_site(scope, host_of(scope, forwarded=self._forwarded))
        if referrer is not None:
            touch["referrer"] = referrer
        if click is not None:
            touch["click_id"] = click
        touch.update(found)
        return touch


def _navigates(scope: Scope) -> bool:
    """Whether the browser navigates (``Sec-Fetch-Mode`` absent: an older browser, assumed)."""
    for name, value in scope["headers"]:
        if name == b"sec-fetch-mode":
            return bool(value == b"navigate")
    return True


def _other_site(scope: Scope, own: str) -> str | None:
    """The ``Referer``'s host when it is another site than ``own`` (``www.`` and subdomains
    of each other count as the same site), else ``None``."""
    for name, value in scope["headers"]:
        if name == b"referer":
            try:
                host = urlsplit(value.decode("latin-1")).hostname
            except ValueError:
                return None
            break
    else:
        return None
    if not host:
        return None
    theirs = host.removeprefix("www.")
    ours = own.partition(":")[0].lower().removesuffix(".").removeprefix("www.")
    if theirs == ours or theirs.endswith("." + ours) or ours.endswith("." + theirs):
        return None
    return str(host)[:100]


def cookie_sender(send: Send, headers: Sequence[Header], prefixes: tuple[bytes, ...]) -> Send:
    """``send``, appending the ``Set-Cookie`` ``headers`` to the response start, unless the app
    set a cookie whose value starts with one of ``prefixes`` (ours: then its decision stands).

    Example:
        >>> sent = []
        >>> async def send(message):
        ...     sent.append(message)
        >>> import asyncio
        >>> asyncio.run(cookie_sender(send, [(b"set-cookie", b"dub_id=c1")], (b"dub_id=",))(
        ...     {"type": "http.response.start", "status": 200}))
        >>> sent[0]["headers"]
        [(b'set-cookie', b'dub_id=c1')]
    """

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = message.get("headers") or ()  # optional in ASGI, any iterable
            if not isinstance(present, (list, tuple)):
                present = list(present)  # read twice below
            if not app_decided(present, prefixes):
                message["headers"] = [*present, *headers]
        await send(message)

    return sender


def app_decided(headers: Sequence[Header], prefixes: tuple[bytes, ...]) -> bool:
    """True if the response ``headers`` set or delete a cookie whose value starts with one of
    ``prefixes`` (ours): the app decided, and a landing's cookies are not added.

    Example:
        >>> app_decided([(b"Set-Cookie", b"dub_id=; Max-Age=0")], (b"dub_id=",))
        True
    """
    for name, value in headers:
        if value.startswith(prefixes) and name.lower() == b"set-cookie":
            return True
    return False
