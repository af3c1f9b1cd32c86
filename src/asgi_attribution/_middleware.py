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

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._attribution import Attribution
from ._context import COOKIES_KEY, SCOPE_KEY, TRACKER_KEY, current_scope
from ._cookies import NINETY_DAYS, CookiePolicy, CookieReader, ManagedCookies, cookie_header
from ._landing import Header, LandingCookies, LandingQuery, cookie_sender
from ._options import callable_or_none, flag, number
from ._partners import PartnerClicks
from ._providers import Provider, get_provider
from ._signing import ClickSigner
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

    async def allows(self, scope: Scope) -> bool:
        """Whether the visitor of ``scope`` consents to keeping their click."""
        if self.honor_gpc and any(
            name == b"sec-gpc" and value.strip() == b"1" for name, value in scope["headers"]
        ):
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
    cookie and is at most ``verified_max_age`` seconds old (default: ``cookie_max_age``).

    Behind a proxy: with ``forwarded_host=True`` the cookie's host and scheme come from the
    first hop of ``Forwarded`` or ``X-Forwarded-Host`` / ``X-Forwarded-Proto`` (only behind a
    proxy that sets them: a visitor could send them too); a partner click's client IP is the
    right-most hop that is not one of ``forwarded_allow_ips`` (default: the direct peer only).

    Partner links on the site itself: with ``refer_domain`` (your Dub short-link domain), a
    navigation to ``?via=<key>`` (``click_query_params``) without a click id of its own gets
    one from the provider's ``POST /track/click``, within ``click_timeout`` seconds, and lands
    as a ``?dub_id=`` would (click and partner cookies, ``get_attribution`` on that request).

    Consent: with ``consent`` (a callable taking the request, returning a bool or an awaitable
    bool) or ``honor_gpc=True`` (a ``Sec-GPC: 1`` request header), nothing is captured and no
    cookie is set unless the visitor consented: the request looks organic. A consent callable
    that raises counts as "no consent" (logged), never as a failed request.

    Example:
        >>> from starlette.applications import Starlette
        >>> app = Starlette()
        >>> app.add_middleware(
        ...     AttributionMiddleware,
        ...     tracker=Tracker("dub"),
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
        self._consent = Consent(consent, honor_gpc)

        managed = [*p.cookie_names]
        if p.partner_cookie:
            managed.append(p.partner_cookie)
        if self.signer is not None:
            managed.append(self.signed_cookie_name)
        self.forwarded_host = forwarded_host
        self.managed_cookies = ManagedCookies(self.cookie, tuple(managed), forwarded_host)
        # What our Set-Cookie headers start with: if the app set one of these, it decided.
        self._ours = (p.cookie_name.encode() + b"=", self.signed_cookie_name.encode() + b"=")

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return

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
            if self._partners is not None and set_cookies is None and kind == "http":
                partner = await self._partner_landing(scope, attribution)
                if partner is not None:
                    attribution, set_cookies = partner
        except Exception:  # never fail a request because of what a visitor sent
            logger.exception("attribution failed; handling the request without it")
            attribution, set_cookies = Attribution(self.provider), None

        # The scope is this request's own (never scope["state"], which a server may share
        # between requests); the services sit beside the data, not inside it.
        scope[SCOPE_KEY] = attribution
        scope[TRACKER_KEY] = self.tracker
        scope[COOKIES_KEY] = self.managed_cookies

        if set_cookies is not None:
            send = cookie_sender(send, set_cookies, self._ours)
        token = current_scope.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            current_scope.reset(token)

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
