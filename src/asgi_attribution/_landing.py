"""A landing: the click id in the URL, and our cookies added to the app's own response.

Both are on the hot path of every landing, so each is written for it: the one parameter is
found without parsing the whole query (unless the query needs unquoting), and the cookies are
appended to the raw header pairs, built once per landing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import parse_qsl

from starlette.types import Message, Scope, Send

from ._attribution import Attribution
from ._cookies import ClickCookies, CookiePolicy, host_of, is_click_id, is_https, valid_click_id
from ._providers import Provider
from ._signing import ClickSigner

__all__ = ["Landing", "LandingCookies", "LandingQuery", "cookie_sender"]


Header = tuple[bytes, bytes]

# A whole click id up to the next parameter: nothing to unquote, reject or log.
_CLEAN_CLICK = re.compile(rb"([A-Za-z0-9_-]{1,64})(?:&|\Z)").match


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

    __slots__ = (
        "_no_track",
        "_no_track_bytes",
        "_no_track_search",
        "_param",
        "_search",
        "_where",
        "accepts",
        "needle",
        "provider",
    )

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._param = provider.query_param
        self._no_track = provider.no_track_param
        # Only placeholders are refused: without any (and the method not overridden), nothing
        # is asked.
        default = type(provider).accepts_click_id is Provider.accepts_click_id
        plain = default and not provider.placeholder_click_ids
        #: The provider's ``accepts_click_id``, or ``None`` when it accepts every valid id.
        self.accepts = None if plain else provider.accepts_click_id
        #: Bytes whose absence from the query means no landing (a cheap first test).
        self.needle = provider.query_param.encode() + b"="
        self._where = f"query {provider.query_param}"
        self._search = re.compile(rb"(?:^|&)" + re.escape(self.needle) + rb"([^&]*)").search
        no_track = provider.no_track_param
        self._no_track_bytes = b"" if no_track is None else no_track.encode()
        self._no_track_search = (
            None
            if no_track is None
            else re.compile(rb"(?:^|&)" + re.escape(no_track.encode()) + rb"(?:[=&]|$)").search
        )

    def click(self, query: bytes, at: int | None = None) -> str | None:
        """The click id in ``query`` (raw bytes), or ``None``.

        ``at``: where the caller already found :attr:`needle` in ``query`` (one search less).
        """
        # Integers, not b"%": `bytes in bytes` first tries the needle as an int, and the
        # TypeError it raises and clears costs more than the search.
        if 37 in query or 43 in query:  # "%" or "+": unquoting needed, parse it all
            params = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="replace")
            click = None
            for key, value in params:
                if self._no_track and key == self._no_track:
                    return None
                if key == self._param and click is None:
                    click = value
        else:
            no_track = self._no_track_search
            if no_track is not None and query.find(self._no_track_bytes) >= 0 and no_track(query):
                return None
            needle = self.needle
            i = query.find(needle) if at is None else at
            if i < 0:
                return None
            if i == 0 or query[i - 1] == 38:  # "&": the first occurrence is the parameter
                start = i + len(needle)
                clean = _CLEAN_CLICK(query, start)
                if clean is not None:  # the usual landing: a valid id, one regex call
                    click = clean[1].decode()
                    accepts = self.accepts
                    return click if accepts is None or accepts(click) else None
                end = query.find(b"&", start)
                raw = query[start:] if end < 0 else query[start:end]
            else:  # "xdub_id=": the parameter, if any, is further on
                found = self._search(query)
                if found is None:
                    return None
                raw = found.group(1)
            click = raw.decode("latin-1")
        if click is None:
            return None
        if is_click_id(click) is None:
            click = valid_click_id(click, where=self._where)  # logs why it is ignored
        # A placeholder (PIMMS' `?pimms_id=1`) never overwrites a real click.
        accepts = self.accepts
        return click if click is None or accepts is None or accepts(click) else None


class LandingCookies:
    """The ``Set-Cookie`` headers of a landing: the click cookie, its signed companion (with a
    signer) and the partner cookie (with partner data), for the request's host and scheme.

    Example:
        >>> cookies = LandingCookies(DUB, CookiePolicy(domain=None))
        >>> cookies.headers({"headers": [], "scheme": "https"}, "c1", host=b"shop.example.com")
        ((b'set-cookie', b'dub_id=c1; Max-Age=7776000; Path=/; SameSite=Lax; Secure'),)
    """

    __slots__ = (
        "_attributes",
        "_forwarded",
        "_name",
        "_partner",
        "_policy",
        "_signed",
        "_signer",
        "plain",
        "prefix",
    )

    def __init__(
        self,
        provider: Provider,
        policy: CookiePolicy,
        signer: ClickSigner | None = None,
        *,
        forwarded: bool = False,
    ) -> None:
        self._name = provider.cookie_name
        #: ``dub_id=``: what each click cookie's bytes start with.
        self.prefix = provider.cookie_name.encode() + b"="
        self._partner = provider.partner_cookie
        self._policy = policy
        self._signer = signer
        # The companion is HttpOnly: page scripts (the provider's included) never need it.
        self._signed = (provider.cookie_name + "_sig", replace(policy, httponly=True))
        self._forwarded = forwarded
        # The click cookie's attributes, encoded, by raw Host header (or host name) and scheme:
        # a landing then decodes and encodes nothing but the click id.
        self._attributes: dict[tuple[bytes | str, object], bytes] = {}
        #: That cache when a landing sets the click cookie alone, from the Host header (no
        #: signing, no proxy headers to read): a hit is the whole answer. Otherwise None.
        self.plain = self._attributes if signer is None and not forwarded else None

    def headers(
        self,
        scope: Scope,
        click_id: str,
        partner_data: str | None = None,
        host: bytes | None = None,
    ) -> tuple[Header, ...]:
        """The headers for a landing on ``click_id``; ``host``: the raw Host header, if read."""
        forwarded = self._forwarded
        key: bytes | str
        if host is None or forwarded:
            key = named = host_of(scope, forwarded=forwarded)
        else:
            key, named = host, None
        # Keyed by the scheme itself: whether it is https is asked on a miss only.
        scheme = scope.get("scheme") if not forwarded else is_https(scope, forwarded=True)
        attributes = self._attributes.get((key, scheme))
        if attributes is None:
            https = scheme is True or scheme in ("https", "wss")
            if named is None:
                named = key.decode("latin-1") if isinstance(key, bytes) else key
            # ASCII (a validated path and domain): UTF-8 is Latin-1 here, by the fastest codec.
            attributes = self._policy.attributes(named, https).encode()
            if len(key) <= 260:  # as the policy's own cache: no hostile giants, no flood
                if len(self._attributes) >= 256:
                    self._attributes.clear()
                self._attributes[(key, scheme)] = attributes
        click = (b"set-cookie", self.prefix + click_id.encode() + attributes)
        if self._signer is None and partner_data is None:
            return (click,)
        if named is None:
            named = key.decode("latin-1") if isinstance(key, bytes) else key
        https = scheme is True or scheme in ("https", "wss")
        policy = self._policy
        cookies = [click]
        if self._signer is not None:
            # The server saw this click arrive: vouch for it, and say when.
            name, signed = self._signed
            token = self._signer.sign(click_id)
            cookies.append(_header(signed.header(name, token, host=named, https=https)))
        if partner_data is not None and self._partner is not None:
            partner = policy.header(self._partner, partner_data, host=named, https=https)
            cookies.append(_header(partner))
        return tuple(cookies)


class Landing:
    """What a request whose query names a click means, without signing or consent to check.

    Example:
        >>> landing = Landing(LandingQuery(DUB), ClickCookies(["dub_id"]),
        ...                   LandingCookies(DUB, CookiePolicy(domain=None)))
        >>> attribution, cookies = landing.attribute({"headers": [], "scheme": "http"},
        ...                                          b"dub_id=c1", 0, None)
        >>> attribution.click_id, cookies
        ('c1', ((b'set-cookie', b'dub_id=c1; Max-Age=7776000; Path=/; SameSite=Lax'),))
    """

    __slots__ = ("_cached", "_clicks", "_cookies", "_first_click", "_prefix", "_provider", "_query")

    def __init__(
        self,
        query: LandingQuery,
        clicks: ClickCookies,
        cookies: LandingCookies,
        *,
        first_click: bool = False,
    ) -> None:
        self._query = query
        self._provider = query.provider
        self._clicks = clicks
        self._cookies = cookies
        self._first_click = first_click
        # The usual landing looks its cookie's attributes up here, without a call into `cookies`.
        self._cached = cookies.plain
        self._prefix = cookies.prefix

    def attribute(
        self, scope: Scope, query: bytes, at: int, header: bytes | None
    ) -> tuple[Attribution, tuple[Header, ...] | None]:
        """The attribution and the cookies to set (``None``: none); ``at``: where ``query``
        names the click (:attr:`LandingQuery.needle`); ``header``: the request's cookies."""
        provider = self._provider
        click = self._query.click(query, at)
        if click is None:  # no valid click in the URL: the cookies say, when asked
            return Attribution.from_cookie_header(provider, header, self._clicks.read), None
        partner = None
        if header is not None:
            if self._first_click:
                kept, partner = self._clicks.read(header)
                if kept is not None:  # first click: the older cookie stays
                    return Attribution(
                        provider, click_id=kept, source="cookie", partner_raw=partner
                    ), None
            else:
                partner = self._clicks.partner(header)
        landed = Attribution.from_landing(provider, click, partner)
        host = None
        for name, value in scope["headers"]:
            if name == b"host":  # usually the first header
                host = value
                break
        cached = self._cached
        if cached is not None and host is not None:
            attributes = cached.get((host, scope.get("scheme")))
            if attributes is not None:
                return landed, ((b"set-cookie", self._prefix + click.encode() + attributes),)
        return landed, self._cookies.headers(scope, click, host=host)


def _header(cookie: str) -> Header:
    return (b"set-cookie", cookie.encode("latin-1"))


def cookie_sender(send: Send, headers: Sequence[Header], prefixes: tuple[bytes, ...]) -> Send:
    """``send``, appending the ``Set-Cookie`` ``headers`` to the response start, unless the app
    set a cookie whose value starts with one of ``prefixes`` (ours: then its decision stands).

    A closure, not an object with ``__call__``: calling an instance goes through the type's
    slot, which costs more than the header append on every message of a landing.

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
            for name, value in present:
                if len(name) == 10 and name.lower() == b"set-cookie" and value.startswith(prefixes):
                    break
            else:
                message["headers"] = [*present, *headers]
        await send(message)

    return sender
