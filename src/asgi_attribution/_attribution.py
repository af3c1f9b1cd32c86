"""What the middleware learned about one request: the click id, the partner behind it, and
(with ``touchpoints=True``) the first and last campaign touch.

Also the round trip of that click through a flow that loses the cookies (an OAuth redirect
ending in a cross-site ``form_post``): :func:`attribution_state` puts it in a signed token,
:func:`restore_attribution` makes it the request's click again at the callback.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import HTTPConnection
from starlette.responses import Response

from ._context import SCOPE_KEY, RequestLike, middleware_hint, scope_of, services_of
from ._cookies import (
    CookieReader,
    Headers,
    TouchCookie,
    TouchData,
    cookie_header,
    valid_click_id,
)
from ._landing import LandingCookies
from ._options import number
from ._providers import Provider
from ._signing import MAX_STATE_TOKEN, StateTokens

__all__ = [
    "Attribution",
    "Discount",
    "Partner",
    "PartnerData",
    "RoundTrips",
    "Source",
    "Touch",
    "Touchpoints",
    "attribution_in",
    "attribution_state",
    "get_attribution",
    "parse_partner_data",
    "restore_attribution",
]


logger = logging.getLogger("asgi_attribution")

#: Where a request's click id came from: its cookie, its URL (a landing), or a round-trip
#: token (:func:`restore_attribution`).
Source = Literal["cookie", "query", "restored"]


class Partner(BaseModel):
    """The partner (affiliate) whose link brought the visitor, from ``dub_partner_data``.

    Example:
        >>> Partner(id="pn_1", name="Ada").name
        'Ada'
    """

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    id: str | None = None
    name: str | None = None
    image: str | None = None
    groupId: str | None = None
    tenantId: str | None = None


class Discount(BaseModel):
    """The discount the partner's link carries (``amount`` is a percentage or cents by ``type``).

    Example:
        >>> Discount(amount=20, type="percentage").amount
        20.0
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    id: str | None = None
    amount: float | None = None
    type: str | None = None
    maxDuration: int | None = None
    couponId: str | None = None
    couponTestId: str | None = None


class PartnerData(BaseModel):
    """The parsed ``dub_partner_data`` cookie: click id, partner and discount.

    Example:
        >>> PartnerData(clickId="c1", partner={"name": "Ada"}).partner.name
        'Ada'
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    clickId: str | None = None
    partner: Partner | None = None
    discount: Discount | None = None


def parse_partner_data(raw: str) -> PartnerData | None:
    """Parse Dub's partner cookie; ``None`` (logged at debug) when it is not what Dub writes.

    Dub's script writes JSON with the partner name and image URI-encoded, and its cookie library
    may percent-encode the whole value, so both layers are decoded.

    Example:
        >>> parse_partner_data('{"partner":{"name":"Ada%20L."}}').partner.name
        'Ada L.'
    """
    text = raw if raw.startswith("{") else unquote(raw)
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        partner = data.get("partner")
        if isinstance(partner, dict):
            for key in ("name", "image"):
                if isinstance(partner.get(key), str):
                    partner[key] = unquote(partner[key])
        return PartnerData.model_validate(data)
    except (ValueError, ValidationError) as exc:
        logger.debug("ignored malformed partner cookie: %s", str(exc)[:200])
        return None


@dataclass(frozen=True, slots=True)
class Touch:
    """One campaign touch: a navigation landing with UTM tags, an ad click id or the
    provider's click id (``AttributionMiddleware(touchpoints=True)``).

    ``time`` is when it landed (epoch seconds), ``path`` the landing path, ``referrer`` the
    referring site's host (``None`` when the visitor came from the site itself or sent none),
    ``click_id`` the provider's click id; the others are the query parameters of the same
    names, ``None`` when absent. Text is cut to 100 characters.

    Example:
        >>> touch = Touch(time=1700000000, path="/", utm_source="newsletter", gclid="g1")
        >>> touch.utm_source, touch.as_dict()
        ('newsletter', {'time': 1700000000, 'path': '/', 'utm_source': 'newsletter', 'gclid': 'g1'})
    """

    time: int
    path: str
    referrer: str | None = None
    click_id: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    gclid: str | None = None
    gbraid: str | None = None
    wbraid: str | None = None
    fbclid: str | None = None
    ttclid: str | None = None
    msclkid: str | None = None
    li_fat_id: str | None = None
    twclid: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, by name (as events' metadata and the cookie carry them)."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Touch:
        """A touch from :meth:`as_dict`'s shape; unknown keys are left out.

        Example:
            >>> Touch.from_dict({"time": 1, "path": "/", "fbclid": "f", "other": "x"}).fbclid
            'f'
        """
        return cls(**{k: v for k, v in data.items() if k in _TOUCH_FIELDS})


_TOUCH_FIELDS = frozenset(f.name for f in fields(Touch))


class Touchpoints:
    """The visitor's first and last touch (each a :class:`Touch`, or ``None``).

    Read from the ``attribution_touch`` cookie on first access of :attr:`first` or
    :attr:`last`; a malformed or tampered cookie reads as none.

    Example:
        >>> touches = Touchpoints(Touch(time=1, path="/a"), Touch(time=2, path="/b"))
        >>> touches.first.path, touches.last.path
        ('/a', '/b')
        >>> Touchpoints().first is None
        True
    """

    __slots__ = ("_cookie", "_first", "_headers", "_last")

    def __init__(self, first: Touch | None = None, last: Touch | None = None) -> None:
        self._first, self._last = first, last
        self._headers: Headers | None = None
        self._cookie: TouchCookie | None = None

    @classmethod
    def from_headers(cls, headers: Headers, cookie: TouchCookie) -> Touchpoints:
        """Touchpoints read from the request's ``headers`` by ``cookie`` when first asked for."""
        touches = cls.__new__(cls)
        touches._first = touches._last = None
        touches._headers, touches._cookie = headers, cookie
        return touches

    def _read(self) -> None:
        headers, cookie = self._headers, self._cookie
        if headers is None or cookie is None:
            return
        self._headers = self._cookie = None
        loaded = cookie.load(cookie.raw(headers))
        if loaded is not None:
            try:
                self._first, self._last = Touch.from_dict(loaded[0]), Touch.from_dict(loaded[1])
            except TypeError:  # a signed cookie of another shape (an older version): absent
                logger.debug("ignored touch cookie of another shape")

    @property
    def first(self) -> Touch | None:
        """The first touch the cookie kept, or ``None``."""
        self._read()
        return self._first

    @property
    def last(self) -> Touch | None:
        """The latest touch (the first one when there was only one), or ``None``."""
        self._read()
        return self._last

    def as_metadata(self) -> dict[str, Any] | None:
        """``{"first": {...}, "last": {...}}`` for an event's metadata; ``None`` without touch."""
        first, last = self.first, self.last
        if first is None or last is None:
            return None
        return {"first": first.as_dict(), "last": last.as_dict()}

    def __repr__(self) -> str:
        return f"Touchpoints(first={self.first!r}, last={self.last!r})"


_NO_TOUCHPOINTS = Touchpoints()


class Attribution:
    """The click behind one request, as seen by :class:`AttributionMiddleware`: plain data.

    ``click_id`` is ``None`` for an organic visit. ``source`` is ``"cookie"``, ``"query"`` (a
    landing) or ``"restored"`` (from a round-trip token, see :func:`restore_attribution`).
    ``captured`` is True when this request landed with the click id in its URL and the cookie
    was set. ``verified`` is True when the server itself saw this click id arrive in a landing
    URL (on the landing, or later through the signed companion cookie, within its max age);
    always False without ``signing_secrets`` on the middleware. The cookies are read on first
    access of ``click_id`` (most requests never ask), and ``partner_data`` parses Dub's partner
    cookie on first access only.

    Example:
        >>> a = Attribution(DUB, click_id="abc", source="cookie")
        >>> a.click_id, a.is_attributed
        ('abc', True)
    """

    __slots__ = (
        "_click",
        "_headers",
        "_partner",
        "_partner_raw",
        "_reader",
        "_source",
        "_touchpoints",
        "captured",
        "provider",
        "verified",
    )

    def __init__(
        self,
        provider: Provider,
        *,
        click_id: str | None = None,
        source: Source | None = None,
        partner_raw: str | None = None,
        captured: bool = False,
        verified: bool = False,
    ) -> None:
        self._fill(provider, click_id, source, partner_raw, captured, verified, None, None)

    def _fill(
        self,
        provider: Provider,
        click_id: str | None,
        source: Source | None,
        partner_raw: str | None,
        captured: bool,
        verified: bool,
        headers: Headers | None,
        reader: CookieReader | None,
    ) -> None:
        self.provider = provider
        self._click = click_id
        self._source = source
        self.captured = captured
        self.verified = verified
        self._partner_raw = partner_raw
        self._partner: PartnerData | Literal[False] | None = False
        # The request's headers, their cookies not read yet, and what reads them (see
        # from_headers).
        self._headers = headers
        self._reader = reader

    @classmethod
    def from_headers(
        cls,
        provider: Provider,
        headers: Headers,
        reader: CookieReader,
        landed: str | None = None,
    ) -> Attribution:
        """An attribution whose cookies are read from the request's ASGI ``headers`` on first use.

        The middleware's answer for a request whose cookies decide nothing now: most requests
        never ask for their click, and then the headers are not even searched for a ``Cookie``.
        No ``Cookie`` header: an organic visit. ``landed``: the click id of a landing URL (it
        wins; the cookies then give only the partner cookie).

        Example:
            >>> headers = [(b"host", b"a.com"), (b"cookie", b"dub_id=c1")]
            >>> a = Attribution.from_headers(DUB, headers, CookieReader(["dub_id"]))
            >>> a.click_id, a.source
            ('c1', 'cookie')
            >>> Attribution.from_headers(DUB, headers, CookieReader(["dub_id"]), "c2").click_id
            'c2'
        """
        # This runs on almost every request: built without __init__'s keywords, which a type
        # call first gathers into a dict (6,400 instructions instead of 3,900).
        attribution = cls.__new__(cls)
        attribution.provider = provider
        attribution._click, attribution._source = landed, None if landed is None else "query"
        attribution._partner_raw, attribution._partner = None, False
        attribution.captured, attribution.verified = landed is not None, False
        attribution._headers, attribution._reader = headers, reader
        return attribution

    @classmethod
    def from_landing(
        cls,
        provider: Provider,
        click_id: str,
        partner_raw: str | None = None,
        *,
        verified: bool = False,
    ) -> Attribution:
        """The attribution of a landing: ``click_id`` from the URL, captured into the cookie.

        Example:
            >>> a = Attribution.from_landing(DUB, "c1")
            >>> a.click_id, a.source, a.captured
            ('c1', 'query', True)
        """
        attribution = cls.__new__(cls)
        attribution.provider = provider
        attribution._click, attribution._source = click_id, "query"
        attribution._partner_raw, attribution._partner = partner_raw, False
        attribution.captured, attribution.verified = True, verified
        attribution._headers = attribution._reader = None
        return attribution

    def _read_cookies(self) -> None:
        headers, reader = self._headers, self._reader
        if headers is None or reader is None:
            return
        self._headers = self._reader = None
        header = cookie_header(headers)
        if header is None:
            return
        cookies = reader.read(header)
        if not self.captured:
            self._click = reader.click_id(cookies)
            self._source = "cookie" if self._click is not None else None
        self._partner_raw = cookies.get(reader.partner) if reader.partner else None

    @property
    def click_id(self) -> str | None:
        """The click id, or ``None`` for an organic visit."""
        self._read_cookies()
        return self._click

    @property
    def source(self) -> Source | None:
        """Where the click id came from: ``"cookie"``, ``"query"`` (a landing), ``"restored"``
        (a round-trip token) or ``None``."""
        self._read_cookies()
        return self._source

    @property
    def partner_raw(self) -> str | None:
        """The raw partner cookie (``dub_partner_data``) as the browser sent it, if any."""
        self._read_cookies()
        return self._partner_raw

    @property
    def is_attributed(self) -> bool:
        """Whether this request carries a click id."""
        return self.click_id is not None

    @property
    def partner_data(self) -> PartnerData | None:
        """Dub's ``dub_partner_data`` cookie, parsed and decoded on first access."""
        if self._partner is False:
            raw = self.partner_raw
            self._partner = parse_partner_data(raw) if raw else None
        return self._partner

    @property
    def partner(self) -> Partner | None:
        """The referring partner, if Dub's partner cookie names one."""
        data = self.partner_data
        return data.partner if data else None

    @property
    def discount(self) -> Discount | None:
        """The partner's discount, if Dub's partner cookie carries one."""
        data = self.partner_data
        return data.discount if data else None

    @property
    def touchpoints(self) -> Touchpoints:
        """The visitor's first and last campaign touch (``AttributionMiddleware(touchpoints=
        True)``; otherwise both ``None``). The cookie is parsed on first access only.

        Example:
            >>> Attribution(DUB).touchpoints.first is None
            True
        """
        try:
            return self._touchpoints
        except AttributeError:  # left unset by the middleware: no cost on its plain path
            return _NO_TOUCHPOINTS

    @touchpoints.setter
    def touchpoints(self, value: Touchpoints) -> None:
        # Set by the middleware (touchpoints=True), or by a test building its own attribution.
        self._touchpoints = value

    def __repr__(self) -> str:
        return (
            f"Attribution(provider={self.provider.name!r}, click_id={self.click_id!r}, "
            f"source={self.source!r}, verified={self.verified})"
        )


def get_attribution(request: RequestLike | None = None) -> Attribution:
    """The :class:`Attribution` the middleware attached to ``request`` (HTTP or WebSocket).

    ``request`` is the framework's request (Starlette, FastAPI, Django ASGI, Litestar, Quart:
    anything with an ASGI ``.scope``), a raw ASGI scope, or ``None`` for the request being
    handled. Works as a FastAPI dependency: ``attribution: Attribution =
    Depends(get_attribution)``. Raises ``RuntimeError`` when :class:`AttributionMiddleware` did
    not see the request, because that is a setup mistake to fix, not a visitor to ignore, and
    ``TypeError`` for anything that is not a request. A WSGI environ, Flask request or Django
    ``HttpRequest`` works when served through :mod:`asgi_attribution.wsgi`.

    Example:
        >>> from starlette.requests import Request
        >>> get_attribution(Request({"type": "http"}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: no attribution on this request: add AttributionMiddleware to the app ...
        >>> get_attribution({"type": "http", "asgi_attribution": Attribution(DUB)}).click_id
    """
    scope = scope_of(request)
    if scope is None:
        raise RuntimeError("no request being handled: pass the request (or its ASGI scope)")
    return attribution_in(scope)


# FastAPI injects the request into a dependency whose parameter names a request class; the
# wider annotation above is for type checkers and readers.
get_attribution.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(
            "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection
        )
    ],
    return_annotation=Attribution,
)


def attribution_in(scope: Mapping[str, Any]) -> Attribution:
    """The :class:`Attribution` in an ASGI ``scope``; ``RuntimeError`` naming the fix if none.

    Example:
        >>> attribution_in({"asgi_attribution": Attribution(DUB, click_id="c1")}).click_id
        'c1'
    """
    attribution = scope.get(SCOPE_KEY)
    if not isinstance(attribution, Attribution):
        raise RuntimeError("no attribution on this request: " + middleware_hint(scope))
    return attribution


class RoundTrips:
    """What the middleware lends :func:`attribution_state` and :func:`restore_attribution`:
    its token signer and the cookies of a landing, for one provider.

    ``signed`` sets the click cookie with its signed companion (a click the server verified);
    ``plain`` sets it without (a click the server never saw arrive stays unverified);
    ``opted_out(scope)`` is the middleware's consent rule that needs no asking (``Sec-GPC``).

    Example:
        >>> from asgi_attribution._cookies import CookiePolicy
        >>> from asgi_attribution._signing import ClickSigner
        >>> policy = CookiePolicy(domain=None)
        >>> trips = RoundTrips(DUB, StateTokens("secret", salt="s"), LandingCookies(
        ...     DUB, policy, ClickSigner("secret", max_age=60)), LandingCookies(DUB, policy))
        >>> trips.provider.name
        'dub'
    """

    __slots__ = ("opted_out", "plain", "provider", "signed", "tokens", "touch_header")

    def __init__(
        self,
        provider: Provider,
        tokens: StateTokens,
        signed: LandingCookies,
        plain: LandingCookies,
        opted_out: Callable[[Any], bool] = lambda scope: False,
        touch_header: Callable[
            [Any, TouchData, TouchData], tuple[tuple[bytes, bytes], TouchData, TouchData]
        ]
        | None = None,
    ) -> None:
        self.provider = provider
        self.tokens = tokens
        self.signed = signed
        self.plain = plain
        #: Whether a request says no by itself (``Sec-GPC: 1`` with ``honor_gpc``).
        self.opted_out = opted_out
        #: With ``touchpoints=True``: the touch cookie's ``Set-Cookie`` for (scope, first, last).
        self.touch_header = touch_header


def _round_trips(request: RequestLike | None, caller: str) -> tuple[Any, RoundTrips]:
    """The request's scope and the middleware's :class:`RoundTrips`; a clear error if none."""
    scope = scope_of(request)
    if scope is None:
        raise RuntimeError("no request being handled: pass the request (or its ASGI scope)")
    attribution_in(scope)  # no middleware: says how to add it
    services = services_of(scope)
    trips = None if services is None else services.round_trips
    if not isinstance(trips, RoundTrips):
        raise RuntimeError(
            f"{caller}() signs its token with the middleware's secret: pass "
            "AttributionMiddleware(signing_secrets=...) (one long random secret, or a list to "
            "rotate them)"
        )
    return scope, trips


# What a token may lose to stay within MAX_STATE_TOKEN, first dropped first; the click id never.
_OPTIONAL = (("t", "touchpoints"), ("p", "partner cookie"))


def attribution_state(request: RequestLike | None = None) -> str:
    """A signed token of the request's click, to carry through a flow that loses the cookies.

    Put it where the flow brings it back: an OAuth ``state`` (next to your own CSRF value), a
    ``redirect_uri`` query parameter, a hidden form field. It holds the click id, whether the
    server verified it, the partner cookie and (``touchpoints=True``) the first and last touch;
    the touchpoints, then the partner cookie, are left out with a WARNING when they would make
    the token longer than 512 characters. An organic visit gets a token holding no click. It
    is URL-safe, at most 512 characters, signed with the middleware's ``signing_secrets`` (a
    ``RuntimeError`` says so when there are none) and readable by :func:`restore_attribution`
    only. The click id is visible in it (signed, not encrypted), as
    it is in the landing URL.

    Example:
        >>> from starlette.applications import Starlette
        >>> from starlette.responses import PlainTextResponse
        >>> from starlette.routing import Route
        >>> import asyncio, httpx
        >>> async def login(request):  # then redirect to the identity provider with it
        ...     return PlainTextResponse(attribution_state(request))
        >>> app = Starlette(routes=[Route("/login", login)])
        >>> app.add_middleware(AttributionMiddleware, tracker=Tracker("dub"),
        ...                    signing_secrets="long-random-secret")
        >>> async def visit():
        ...     async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
        ...                                  base_url="http://shop.test") as client:
        ...         return (await client.get("/login", headers={"cookie": "dub_id=c1"})).text
        >>> len(asyncio.run(visit())) <= 512
        True
    """
    scope, trips = _round_trips(request, "attribution_state")
    attribution = attribution_in(scope)
    fields: dict[str, Any] = {}
    click_id = attribution.click_id
    if click_id is not None:
        fields["c"] = click_id
        if attribution.verified:
            fields["v"] = 1
        partner = attribution.partner_raw
        if partner:
            fields["p"] = partner
    if trips.touch_header is not None:
        first, last = attribution.touchpoints.first, attribution.touchpoints.last
        if first is not None and last is not None:
            fields["t"] = {"f": first.as_dict(), "l": last.as_dict()}
    token = trips.tokens.dumps(fields)
    for key, what in _OPTIONAL:
        if len(token) <= MAX_STATE_TOKEN:
            break
        if key in fields:
            logger.warning(
                "attribution state: the %s left out to keep the token within %d characters; "
                "the click id is kept",
                what,
                MAX_STATE_TOKEN,
            )
            del fields[key]
            token = trips.tokens.dumps(fields)
    return token


def restore_attribution(
    request: RequestLike | None, response: Response, token: str, max_age: int = 3600
) -> bool:
    """Make the click in ``token`` (from :func:`attribution_state`) this request's click.

    At the end of the flow (the OAuth callback, say), when the request carries no click of its
    own: sets the click cookies on ``response`` (a Starlette or FastAPI ``Response``, any
    subclass: ``RedirectResponse``, ``JSONResponse``, ...) and makes :func:`get_attribution` and
    ``track_lead(request, ...)`` use the restored click for the rest of this request (``source
    == "restored"``; ``verified`` as it was when the token was made). Returns True when it did.
    A request with a click of its own keeps it (False), and so does one that opts out
    (``Sec-GPC: 1`` with the middleware's ``honor_gpc``; the ``consent`` callable is not asked
    again: a token holds a click only if it was captured with consent). A bad, tampered, foreign
    or expired (older than ``max_age`` seconds) token is ignored with a WARNING: never an
    exception, since a visitor can send anything. A wrong ``response`` or ``max_age``, or a
    middleware without ``signing_secrets``, is a ``TypeError`` / ``RuntimeError`` at the call.

    Example:
        >>> from starlette.applications import Starlette
        >>> from starlette.responses import PlainTextResponse, RedirectResponse
        >>> from starlette.routing import Route
        >>> import asyncio, httpx
        >>> async def login(request):
        ...     return PlainTextResponse(attribution_state(request))
        >>> seen = []
        >>> async def callback(request):  # reached without the visitor's cookies
        ...     form = await request.form()
        ...     response = RedirectResponse("/welcome", status_code=303)
        ...     restore_attribution(request, response, form["state"])
        ...     attribution = get_attribution(request)  # and track_lead(request, ...)
        ...     seen.append((attribution.click_id, attribution.source))
        ...     return response
        >>> app = Starlette(routes=[Route("/login", login),
        ...                         Route("/cb", callback, methods=["POST"])])
        >>> app.add_middleware(AttributionMiddleware, tracker=Tracker("dub"),
        ...                    signing_secrets="long-random-secret")
        >>> async def journey():
        ...     async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
        ...                                  base_url="http://shop.test") as client:
        ...         token = (await client.get("/login", headers={"cookie": "dub_id=cm3abc"})).text
        ...         return await client.post("/cb", data={"state": token})
        >>> answer = asyncio.run(journey())
        >>> seen, answer.headers["set-cookie"].split(";")[0]
        ([('cm3abc', 'restored')], 'dub_id=cm3abc')
    """
    scope, trips = _round_trips(request, "restore_attribution")
    number("restore_attribution", "max_age", max_age, 1, integer=True)
    if not isinstance(response, Response):
        raise TypeError(
            "restore_attribution(response=...) must be a Starlette or FastAPI Response (the "
            f"one you return), got {type(response).__name__}"
        )
    fields = trips.tokens.loads(token, max_age=max_age)
    if fields is None:
        return False
    if attribution_in(scope).click_id is not None:
        logger.debug("attribution state not restored: the request carries its own click")
        return False
    if trips.opted_out(scope):
        logger.debug("attribution state not restored: the visitor opted out (Sec-GPC)")
        return False
    provider = trips.provider
    given = fields.get("c")
    click_id = valid_click_id(given if isinstance(given, str) else None, where="state token")
    if click_id is None or not provider.accepts_click_id(click_id):
        if given is not None:
            logger.warning("attribution state ignored: it holds no valid click id")
        return False
    partner = fields.get("p")
    partner_raw = partner if isinstance(partner, str) and partner else None
    verified = fields.get("v") == 1
    cookies = trips.signed if verified else trips.plain
    for _, value in cookies.headers(scope, click_id, partner_raw):
        response.headers.append("set-cookie", value.decode("latin-1"))
    restored = Attribution(
        provider, click_id=click_id, source="restored", partner_raw=partner_raw, verified=verified
    )
    touches = TouchCookie.touches(fields.get("t"))
    if touches is not None and trips.touch_header is not None:
        (_, value), first, last = trips.touch_header(scope, *touches)
        response.headers.append("set-cookie", value.decode("latin-1"))
        restored.touchpoints = Touchpoints(Touch.from_dict(first), Touch.from_dict(last))
    scope[SCOPE_KEY] = restored
    return True
