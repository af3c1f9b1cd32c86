"""A landing: the click id in the URL, and our cookies added to the app's own response.

:class:`LandingQuery` reads the provider's click id from the query string as its browser script
does; :class:`LandingCookies` builds the ``Set-Cookie`` headers of a landing; :func:`cookie_sender`
appends them to the response the app sends, unless the app set or deleted the click cookie
itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import unquote_plus

from starlette.types import Message, Scope, Send

from ._cookies import CookiePolicy, host_of, is_https, valid_click_id
from ._providers import Provider
from ._signing import ClickSigner

__all__ = ["Header", "LandingCookies", "LandingQuery", "app_decided", "cookie_sender"]


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
