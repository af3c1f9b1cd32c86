"""``AttributionMiddleware``: a pure ASGI middleware that finds the click behind each request.

Per HTTP or WebSocket request it puts an :class:`Attribution` under its own scope key (as
Starlette's sessions do): on a landing, the click id in the URL, with the first-party cookie
appended to the app's own response; otherwise the provider's click cookie, read when the app
first asks for it. It never fails a request: bad input is treated as absent.

Two rules run beside it. :class:`Consent` says whether a visitor's click may be kept; it is
asked only when there is a click to keep, so organic traffic pays nothing. :func:`run_lifespan`
starts the tracker at startup and drains it after the app's own shutdown; when the app does not
take part in lifespan (Django raises before its first receive, many apps just return), the
middleware completes the handshake with the server itself, so the tracker is still started and
drained.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal
from urllib.parse import quote, unquote_plus

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._attribution import Attribution, RoundTrips, Touch, Touchpoints
from ._context import SCOPE_KEY, SERVICES_KEY, current_scope
from ._cookies import (
    NINETY_DAYS,
    CookiePolicy,
    CookieReader,
    ManagedCookies,
    TouchCookie,
    TouchData,
    cookie_header,
    host_of,
    is_https,
)
from ._landing import Header, LandingCookies, LandingQuery, TouchQuery, cookie_sender
from ._options import callable_or_none, flag, number
from ._partners import PartnerClicks, is_navigation
from ._providers import Provider, get_provider
from ._signing import ClickSigner, StateTokens
from ._tracker import Tracker

__all__ = ["AttributionMiddleware", "Consent", "ConsentCheck", "run_lifespan"]


logger = logging.getLogger("asgi_attribution")

ConsentCheck = Callable[[HTTPConnection], "bool | Awaitable[bool]"]

"""``consent(connection) -> bool`` (or an awaitable bool): may this visitor's click be kept?"""


class Consent:
    """The middleware's consent rule: a callable, a ``Sec-GPC: 1`` header, or both.

    A callable that raises counts as "no consent" (logged), never as a failed request.

    Example:
        >>> import asyncio
        >>> rule = Consent(None, honor_gpc=True)
        >>> asyncio.run(rule.allows({"type": "http", "headers": [(b"sec-gpc", b"1")]}))
        False
    """

    __slots__ = ("check", "gated", "honor_gpc")

    def __init__(self, check: ConsentCheck | None, honor_gpc: bool) -> None:
        self.check = check
        self.honor_gpc = honor_gpc
        #: Whether anything is asked at all (else every visitor consents, at no cost).
        self.gated = check is not None or honor_gpc

    def opted_out(self, scope: Scope) -> bool:
        """Whether ``scope`` says no by itself: ``Sec-GPC: 1`` with ``honor_gpc``."""
        return self.honor_gpc and any(
            name == b"sec-gpc" and value.strip() == b"1" for name, value in scope["headers"]
        )

    async def allows(self, scope: Scope) -> bool:
        """Whether the visitor of ``scope`` consents to keeping their click."""
        if self.opted_out(scope):
            return False
        if self.check is None:
            return True
        try:
            answer = self.check(HTTPConnection(scope))
            if inspect.isawaitable(answer):
                answer = await answer
            return bool(answer)
        except Exception:
            logger.exception("consent callable failed; treating the visitor as not consenting")
            return False


class _Seen:
    """What passed between the server and the app during one lifespan."""

    __slots__ = ("shutdown", "shutdown_answered", "startup", "startup_answered")

    def __init__(self) -> None:
        self.startup = self.startup_answered = False
        self.shutdown = self.shutdown_answered = False


async def run_lifespan(
    app: ASGIApp,
    tracker: Tracker,
    scope: Scope,
    receive: Receive,
    send: Send,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ``app``'s lifespan; start ``tracker`` at startup, drain it after the app's shutdown.

    The drain follows the app's own shutdown handlers, which may still track events. An app
    that rejects lifespan (raises before receiving ``lifespan.startup``, or returns without
    answering it) gets the handshake completed for it.

    Example:
        >>> async def django_like(scope, receive, send):
        ...     raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")
        >>> async def serve():
        ...     inbox = [{"type": "lifespan.shutdown"}, {"type": "lifespan.startup"}]
        ...     sent = []
        ...     async def receive():
        ...         return inbox.pop()
        ...     async def send(message):
        ...         sent.append(message["type"])
        ...     tracker = Tracker("dub", transport=MemoryTransport())
        ...     await run_lifespan(django_like, tracker, {"type": "lifespan"}, receive, send)
        ...     return sent
        >>> import asyncio
        >>> asyncio.run(serve())
        ['lifespan.startup.complete', 'lifespan.shutdown.complete']
    """
    seen = _Seen()

    async def drain() -> None:
        await _drain(tracker)
        if on_shutdown is not None:
            try:
                await on_shutdown()
            except Exception:
                logger.exception("a shutdown hook of the middleware failed")

    async def receive_and_start() -> Message:
        message = await receive()
        if message["type"] == "lifespan.startup":
            seen.startup = True
            await _start(tracker)
        elif message["type"] == "lifespan.shutdown":
            seen.shutdown = True
        return message

    async def drain_then_send(message: Message) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup."):
            seen.startup_answered = True
            if kind == "lifespan.startup.failed":
                await drain()  # the server stops: deliver what the startup tracked
        elif kind.startswith("lifespan.shutdown."):
            seen.shutdown_answered = True
            await drain()
        await send(message)

    try:
        await app(scope, receive_and_start, drain_then_send)
    except Exception:
        if seen.startup_answered:
            raise  # the app speaks lifespan and failed: the server decides what follows
        if seen.startup:
            logger.exception("the app's lifespan startup failed")
    if seen.shutdown_answered:
        return
    if not seen.startup_answered:
        logger.info(
            "the app does not handle lifespan: AttributionMiddleware starts and drains the "
            "tracker itself"
        )
    await _finish(tracker, drain, seen, receive, send)


async def _finish(
    tracker: Tracker,
    drain: Callable[[], Awaitable[None]],
    seen: _Seen,
    receive: Receive,
    send: Send,
) -> None:
    """Complete the handshake the app left unfinished, then drain at shutdown."""
    if not seen.startup_answered:
        if not seen.startup:
            while (await receive())["type"] != "lifespan.startup":
                pass
            await _start(tracker)
        await send({"type": "lifespan.startup.complete"})
    if not seen.shutdown:
        while (await receive())["type"] != "lifespan.shutdown":
            pass
    await drain()
    await send({"type": "lifespan.shutdown.complete"})


async def _start(tracker: Tracker) -> None:
    try:
        await tracker.start()
    except Exception:  # the app's own startup must still run
        logger.exception("the tracker did not start; events are sent inline until it does")


async def _drain(tracker: Tracker) -> None:
    try:
        await tracker.aclose()
    except Exception:
        logger.exception("the tracker did not close cleanly")


AttributionModel = Literal["last-click", "first-click"]


class AttributionMiddleware:
    """Capture the provider's click id on every request and deliver events on lifespan.

    Options (all keyword): ``tracker`` (default: a :class:`Tracker` for ``provider``),
    ``provider`` (``"dub"``, ``"pimms"`` or a :class:`Provider`; default: the tracker's),
    ``attribution_model`` (``"last-click"``: a new click replaces the cookie; ``"first-click"``:
    an existing cookie is kept), ``capture_landing`` (set the cookie from ``?dub_id=``), and the
    cookie attributes ``cookie_max_age``, ``cookie_path``, ``cookie_domain`` (``"auto"``),
    ``cookie_samesite``, ``cookie_secure`` (``None``: on https) and ``cookie_httponly``.

    Verified attribution: with ``signing_secrets`` (one secret or a list; the first signs, all
    verify), a landing also sets an HttpOnly cookie ``<cookie name>_sig`` signing the click id
    and its capture time, and ``Attribution.verified`` is True when it agrees with the click
    cookie and is at most ``verified_max_age`` seconds old (default: ``cookie_max_age``). The
    same secrets sign the round-trip tokens of ``attribution_state`` / ``restore_attribution``.

    Behind a proxy: with ``forwarded_host=True`` the cookie's host and scheme come from the
    first hop of ``Forwarded`` or ``X-Forwarded-Host`` / ``X-Forwarded-Proto`` (only behind a
    proxy that sets them: a visitor could send them too); a partner click's client IP is the
    right-most hop that is not one of ``forwarded_allow_ips`` (default: the direct peer only).

    Partner links on the site itself: with ``refer_domain`` (your Dub short-link domain), a
    navigation to ``?via=<key>`` (``click_query_params``) without a click id of its own gets
    one from the provider's ``POST /track/click``, within ``click_timeout`` seconds, and lands
    as a ``?dub_id=`` would (click and partner cookies, ``get_attribution`` on that request).

    Clean URLs: with ``clean_urls=True``, a browser's navigation (``GET``, ``Sec-Fetch-Mode:
    navigate`` when sent, no prefetch, no bot) whose click was captured is answered ``303 See
    Other`` to the same path without the click id (and, with ``refer_domain``, without the
    partner parameters), every other parameter kept in order, the cookies set on the 303: a
    shared or bookmarked URL credits no click again. Never for other methods, ``HEAD``,
    fetches, a click not captured (no consent, the no-track parameter, an invalid id, a
    first-click cookie kept), or when nothing would be removed.

    Consent: with ``consent`` (a callable taking the request, returning a bool or an awaitable
    bool) or ``honor_gpc=True`` (a ``Sec-GPC: 1`` request header), nothing is captured and no
    cookie is set unless the visitor consented: the request looks organic. A consent callable
    that raises counts as "no consent" (logged), never as a failed request.

    Touchpoints: with ``touchpoints=True``, a navigation GET landing whose query has UTM tags,
    an ad click id (``gclid``, ``fbclid``, ...) or the provider's click id records a touch in
    the HttpOnly ``attribution_touch`` cookie (the first touch kept, the last replaced; signed
    with ``signing_secrets``), read by ``get_attribution(request).touchpoints``. Consent gates
    it as it gates the click.

    Example:
        >>> from starlette.applications import Starlette
        >>> app = Starlette()
        >>> app.add_middleware(
        ...     AttributionMiddleware,
        ...     tracker=Tracker("dub"),
        ...     clean_urls=True,
        ...     signing_secrets=["new-long-random-secret", "previous-secret"],
        ...     consent=lambda request: request.cookies.get("consent") == "yes",
        ...     honor_gpc=True,
        ... )
    """

    def __init__(
        self,
        app: ASGIApp,
        tracker: Tracker | None = None,
        *,
        provider: str | Provider | None = None,
        attribution_model: AttributionModel = "last-click",
        capture_landing: bool = True,
        cookie_max_age: int = NINETY_DAYS,
        cookie_path: str = "/",
        cookie_domain: str | None = "auto",
        cookie_samesite: Literal["lax", "strict", "none"] = "lax",
        cookie_secure: bool | None = None,
        cookie_httponly: bool = False,
        signing_secrets: str | Sequence[str] | None = None,
        verified_max_age: int | None = None,
        consent: ConsentCheck | None = None,
        honor_gpc: bool = False,
        forwarded_host: bool = False,
        forwarded_allow_ips: str | Sequence[str] | None = None,
        refer_domain: str | None = None,
        click_query_params: Sequence[str] = ("via",),
        click_timeout: float = 1.0,
        touchpoints: bool = False,
        clean_urls: bool = False,
    ) -> None:
        if attribution_model not in ("last-click", "first-click"):
            raise ValueError(
                f"attribution_model must be 'last-click' or 'first-click', "
                f"got {attribution_model!r}"
            )
        owner = "AttributionMiddleware"
        for name, value in (
            ("capture_landing", capture_landing),
            ("cookie_httponly", cookie_httponly),
            ("honor_gpc", honor_gpc),
            ("forwarded_host", forwarded_host),
            ("touchpoints", touchpoints),
            ("clean_urls", clean_urls),
        ):
            flag(owner, name, value)
        flag(owner, "cookie_secure", cookie_secure, none=True)
        number(owner, "cookie_max_age", cookie_max_age, 1, integer=True)
        if verified_max_age is not None:
            number(owner, "verified_max_age", verified_max_age, 1, integer=True)
        callable_or_none(owner, "consent", consent, "request")
        if tracker is not None and not isinstance(tracker, Tracker):
            raise TypeError(f"{owner}(tracker=...) must be a Tracker, got {tracker!r}")
        self.app = app
        self.tracker = tracker if tracker is not None else Tracker(provider or "dub")
        self.provider = self.tracker.provider if provider is None else get_provider(provider)
        if self.provider.name != self.tracker.provider.name:
            # Its click ids would be sent to the other provider, which knows none of them.
            raise ValueError(
                f"{owner}(provider={self.provider.name!r}) does not match its tracker's "
                f"provider {self.tracker.provider.name!r}: pass one of them, or make them agree"
            )
        self.first_click = attribution_model == "first-click"
        self.capture_landing = capture_landing
        self.cookie = CookiePolicy(
            max_age=cookie_max_age,
            path=cookie_path,
            domain=cookie_domain,
            samesite=cookie_samesite,
            secure=cookie_secure,
            httponly=cookie_httponly,
        )
        p = self.provider
        self.signed_cookie_name = p.cookie_name + "_sig"
        self.signer = (
            None
            if signing_secrets is None
            else ClickSigner(
                signing_secrets,
                max_age=cookie_max_age if verified_max_age is None else verified_max_age,
                salt=f"asgi-attribution.click.{p.name}",
            )
        )
        self.consent = consent
        self.honor_gpc = honor_gpc
        self.clean_urls = clean_urls
        self._consent = Consent(consent, honor_gpc)
        # Whether decide() may await anything (consent, the provider for a partner click, the
        # touch step, which asks consent).
        self._asks = self._consent.gated or refer_domain is not None or touchpoints
        self._consent_async = consent is not None and (
            inspect.iscoroutinefunction(consent)
            or inspect.iscoroutinefunction(type(consent).__call__)
        )

        managed = [*p.cookie_names]
        if p.partner_cookie:
            managed.append(p.partner_cookie)
        if self.signer is not None:
            managed.append(self.signed_cookie_name)
        # Touchpoints: their cookie, and the query that records them (None: off, at no cost).
        self.touchpoints = touchpoints
        self._touch_cookie: TouchCookie | None = None
        self._touch_query: TouchQuery | None = None
        if touchpoints:
            self._touch_cookie = TouchCookie(
                self.cookie,
                None
                if signing_secrets is None
                else ClickSigner(
                    signing_secrets, max_age=cookie_max_age, salt=f"asgi-attribution.touch.{p.name}"
                ),
            )
            self._touch_query = TouchQuery(p, forwarded=forwarded_host)
            managed.append(self._touch_cookie.name)
        self.forwarded_host = forwarded_host
        self.managed_cookies = ManagedCookies(self.cookie, tuple(managed), forwarded_host)
        # What our Set-Cookie headers start with: if the app set one of these, it decided.
        self._ours = (p.cookie_name.encode() + b"=", self.signed_cookie_name.encode() + b"=")
        #: Set-Cookie values that mean the app decided about our cookies (then ours are not added).
        self.set_cookie_prefixes = self._ours
        self.click_timeout = click_timeout

        self._reader = CookieReader(
            p.cookie_names,
            partner=p.partner_cookie,
            signed=None if self.signer is None else self.signed_cookie_name,
            accepts=p.accepts_click_id,
        )
        self._landing = LandingQuery(p)
        self._landing_cookies = LandingCookies(
            p, self.cookie, self.signer, forwarded=forwarded_host
        )
        # Without signing or consent nothing needs the cookies before the app asks: they are
        # read lazily, so requests that never track (most of them) don't pay for parsing.
        self._lazy = self.signer is None and not self._consent.gated
        # Partner links on the site itself (`?via=john`) carry no click id: with refer_domain,
        # the server asks the provider for one, as its browser script would.
        self._partners = (
            None
            if refer_domain is None
            else PartnerClicks(
                p,
                refer_domain=refer_domain,
                base_url=self.tracker.base_url,
                click_query_params=click_query_params,
                click_timeout=click_timeout,
                forwarded=forwarded_host,
                forwarded_allow_ips=forwarded_allow_ips,
            )
        )
        # The query parameters a clean-URL redirect removes: the click id, and the partner
        # link's (with refer_domain), so the clean URL lands nowhere again.
        removed = [p.query_param]
        if self._partners is not None:
            removed.extend(self._partners.click_query_params)
        self._clean_params = frozenset(removed)
        # attribution_state() and restore_attribution() sign with the same secrets, another salt.
        self.round_trips = (
            None
            if signing_secrets is None
            else RoundTrips(
                p,
                StateTokens(signing_secrets, salt=f"asgi-attribution.state.{p.name}"),
                self._landing_cookies,
                LandingCookies(p, self.cookie, None, forwarded=forwarded_host),
                self._consent.opted_out,
                None if self._touch_cookie is None else self._touch_header,
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return

        if self._asks:
            attribution, set_cookies = await self.decide(scope)
        else:  # decide() without its awaits: nothing to ask, no coroutine to pay for
            try:
                attribution, set_cookies = self._attribute(scope)
            except Exception:  # never fail a request because of what a visitor sent
                logger.exception("attribution failed; handling the request without it")
                attribution, set_cookies = Attribution(self.provider), None

        # attach(), written out: every request runs these two lines.
        scope[SCOPE_KEY] = attribution
        scope[SERVICES_KEY] = self
        if set_cookies is not None:
            redirect = self.see_other(scope, set_cookies)
            if redirect is not None:
                await send({"type": "http.response.start", "status": 303, "headers": redirect})
                await send({"type": "http.response.body", "body": b""})
                return
            send = cookie_sender(send, set_cookies, self._ours)
        token = current_scope.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            current_scope.reset(token)

    def attach(self, scope: Scope, attribution: Attribution) -> None:
        """Put the request's ``attribution``, and what the request helpers use beside it (the
        tracker, the managed cookies, the round-trip signer), on its ``scope``.

        The scope is the request's own (never ``scope["state"]``, which a server may share
        between requests); the services sit beside the data, not inside it.

        Example:
            >>> middleware = AttributionMiddleware(None, Tracker("dub"))
            >>> scope = {"type": "http"}
            >>> middleware.attach(scope, Attribution(middleware.provider, click_id="c1"))
            >>> scope["asgi_attribution"].click_id
            'c1'
        """
        scope[SCOPE_KEY] = attribution
        scope[SERVICES_KEY] = self

    def see_other(self, scope: Scope, set_cookies: Sequence[Header]) -> list[Header] | None:
        """With ``clean_urls``, the headers of the ``303 See Other`` that answers a captured
        landing (the one that sets ``set_cookies``) in place of the app; ``None``: no redirect.

        Example:
            >>> middleware = AttributionMiddleware(None, Tracker("dub"), clean_urls=True)
            >>> browser = (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0")
            >>> scope = {"type": "http", "method": "GET", "path": "/pricing",
            ...          "headers": [browser], "query_string": b"dub_id=c1&utm_source=news"}
            >>> middleware.see_other(scope, [])[0]
            (b'location', b'./pricing?utm_source=news')
        """
        if not self.clean_urls:
            return None
        location = self._clean_location(scope)
        if location is None:
            return None
        # The landing URL is one visitor's: no cache may answer it for another.
        return [
            (b"location", location),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
            *set_cookies,
        ]

    async def decide(self, scope: Scope) -> tuple[Attribution, tuple[Header, ...] | None]:
        """What attribution the request of ``scope`` carries, and the cookies to add to its
        response (``None``: none); the one decision both the ASGI and the WSGI middleware use.

        ``scope`` needs ``type``, ``headers``, ``query_string`` and ``scheme`` (and ``client``
        for a partner click). Never raises: bad input is treated as absent.

        Example:
            >>> import asyncio
            >>> middleware = AttributionMiddleware(None, Tracker("dub"), cookie_domain=None)
            >>> scope = {"type": "http", "scheme": "https", "query_string": b"dub_id=c1",
            ...          "headers": [(b"host", b"shop.example.com")]}
            >>> attribution, cookies = asyncio.run(middleware.decide(scope))
            >>> attribution.click_id, cookies
            ('c1', ((b'set-cookie', b'dub_id=c1; Max-Age=7776000; Path=/; SameSite=Lax; Secure'),))
        """
        try:
            attribution, set_cookies = self._attribute(scope)
            # Consent is asked only when there is something to keep: organic traffic pays
            # nothing.
            if (
                self._consent.gated
                and (
                    set_cookies is not None
                    or attribution.click_id is not None
                    or attribution.partner_raw is not None
                )
                and not await self._consent.allows(scope)
            ):
                attribution, set_cookies = Attribution(self.provider), None
            if self._partners is not None and set_cookies is None and scope["type"] == "http":
                partner = await self._partner_landing(scope, attribution)
                if partner is not None:
                    attribution, set_cookies = partner
            if self._touch_cookie is not None:
                set_cookies = await self._touch(scope, attribution, set_cookies)
        except Exception:  # never fail a request because of what a visitor sent
            logger.exception("attribution failed; handling the request without it")
            attribution, set_cookies = Attribution(self.provider), None
        return attribution, set_cookies

    def may_await(self, scope: Scope) -> bool:
        """Whether :meth:`decide` may wait on I/O for ``scope``: a partner click to ask the
        provider for, or an async consent callable (a sync caller runs it on an event loop).

        Example:
            >>> AttributionMiddleware(None, Tracker("dub")).may_await({"type": "http"})
            False
        """
        if self._consent_async:
            return True
        partners = self._partners
        return partners is not None and partners.wants_click(scope) is not None

    def _attribute(self, scope: Scope) -> tuple[Attribution, tuple[Header, ...] | None]:
        """The request's attribution, and the cookies to set when it is a landing."""
        provider = self.provider
        query = scope.get("query_string", b"")
        click = None
        if (
            query  # most requests have none
            and self.capture_landing
            and query.find(self._landing.needle) >= 0
            and scope["type"] == "http"
        ):
            click = self._landing.click(query)
        if self._lazy and (click is None or not self.first_click):
            # Nothing to check against the cookies: they are read when the app asks.
            attribution = Attribution.from_headers(provider, scope["headers"], self._reader, click)
            if click is None:
                return attribution, None
            return attribution, self._landing_cookies.headers(scope, click)

        header = cookie_header(scope["headers"])
        cookies = {} if header is None else self._reader.read(header)
        kept = self._reader.click_id(cookies) if cookies else None
        partner_raw = cookies.get(provider.partner_cookie) if provider.partner_cookie else None
        if click is not None and not (self.first_click and kept is not None):
            # Always (re)set, as the providers' scripts do: a landing refreshes the expiry.
            landed = Attribution.from_landing(
                provider, click, partner_raw, verified=self.signer is not None
            )
            return landed, self._landing_cookies.headers(scope, click)
        # Also on a first-click landing that keeps the older cookie: the companion keeps saying
        # what it said about that click, and the new, unused click is not signed.
        verified = (
            self.signer is not None
            and kept is not None
            and self.signer.verify(cookies.get(self.signed_cookie_name), kept)
        )
        attribution = Attribution(
            provider,
            click_id=kept,
            source="cookie" if kept is not None else None,
            partner_raw=partner_raw,
            verified=verified,
        )
        return attribution, None

    async def _touch(
        self, scope: Scope, attribution: Attribution, set_cookies: tuple[Header, ...] | None
    ) -> tuple[Header, ...] | None:
        """Attach the request's touchpoints; on a touch landing, add the touch cookie.

        Consent gates them as it gates the click: asked when there is a touch to keep or to
        read (the answer is the same as for the click: the same rule, the same request).
        """
        cookie, query = self._touch_cookie, self._touch_query
        assert cookie is not None and query is not None  # only called with touchpoints on
        headers = scope["headers"]
        landed = query.touch(scope)
        if (
            self._consent.gated
            and (landed is not None or cookie.raw(headers) is not None)
            and not await self._consent.allows(scope)
        ):
            return set_cookies
        if landed is None:
            # Read when the app asks: most requests never do.
            attribution.touchpoints = Touchpoints.from_headers(headers, cookie)
            return set_cookies
        kept = cookie.load(cookie.raw(headers))
        first = landed if kept is None else kept[0]
        header, first, last = self._touch_header(scope, first, landed)
        # What the cookie now says (values cut to fit), as this request's touchpoints.
        attribution.touchpoints = Touchpoints(Touch.from_dict(first), Touch.from_dict(last))
        return (header,) if set_cookies is None else (*set_cookies, header)

    def _touch_header(
        self, scope: Scope, first: TouchData, last: TouchData
    ) -> tuple[Header, TouchData, TouchData]:
        """The touch cookie holding ``first`` and ``last`` for the request's host, and the two
        touches as it holds them (values cut to fit)."""
        assert self._touch_cookie is not None  # only called with touchpoints on
        value, first, last = self._touch_cookie.dump(first, last)
        header = self._touch_cookie.header(
            value,
            host=host_of(scope, forwarded=self.forwarded_host),
            https=is_https(scope, forwarded=self.forwarded_host),
        )
        return header, first, last

    def _clean_location(self, scope: Scope) -> bytes | None:
        """Where a captured landing is redirected with ``clean_urls``: its path, its query
        without the click's parameters (the rest kept in order, byte for byte); ``None`` when
        it is not a browser's navigation or the redirect could loop or leave the site."""
        if not is_navigation(scope):
            return None
        query: bytes = scope.get("query_string", b"")
        kept = [pair for pair in query.split(b"&") if _key(pair) not in self._clean_params]
        clean = b"&".join(kept)
        if len(clean) == len(query):
            return None  # nothing removed: the same URL again would loop
        if clean and self._landing.click(clean) is not None:
            return None  # defensive: the clean URL must not be a landing again
        raw_path = scope.get("raw_path")
        if raw_path:
            path = bytes(raw_path).partition(b"?")[0]
        else:
            path = quote(scope.get("path", "/")).encode("latin-1")
        # Relative to the URL the browser has ("./<last segment>"), so a prefix a proxy strips
        # stays, and the target can never be another site (as "//host" would be).
        target = b"./" + path.rpartition(b"/")[2]
        return target + b"?" + clean if clean else target

    async def _partner_landing(
        self, scope: Scope, attribution: Attribution
    ) -> tuple[Attribution, tuple[Header, ...]] | None:
        """A `?via=` landing: a click minted by the provider, within ``click_timeout``."""
        partners = self._partners
        if partners is None or partners.wants_click(scope) is None:
            return None
        if self.first_click and attribution.click_id is not None:
            return None
        if self._consent.gated and not await self._consent.allows(scope):
            return None
        click = await partners.click_for(scope)
        if click is None:
            return None
        partner_data = click.partner_data_cookie
        landed = Attribution.from_landing(
            self.provider, click.click_id, partner_data, verified=self.signer is not None
        )
        return landed, self._landing_cookies.headers(scope, click.click_id, partner_data)

    async def aclose(self) -> None:
        """Release the partner-click client (lifespan's shutdown calls this under ASGI).

        Example:
            >>> import asyncio
            >>> asyncio.run(AttributionMiddleware(None, Tracker("dub")).aclose())
        """
        if self._partners is not None:
            await self._partners.aclose()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        partners = self._partners
        await run_lifespan(
            self.app,
            self.tracker,
            scope,
            receive,
            send,
            on_shutdown=None if partners is None else partners.aclose,
        )


def _key(pair: bytes) -> str:
    """The decoded name of one ``name=value`` pair of a query string, as browsers read it."""
    name = pair.partition(b"=")[0]
    if b"%" in name or b"+" in name:
        return unquote_plus(name.decode("latin-1"), errors="replace")
    return name.decode("latin-1")
