"""``AttributionMiddleware``: a pure ASGI middleware that finds the click behind each request.

Per request it reads the provider's click cookie (or, on a landing, the click id in the URL),
puts an :class:`Attribution` under its own scope key (as Starlette's sessions do), and on a landing
appends the first-party cookie to the app's own response. On lifespan it starts and drains the
tracker. It never fails a request: bad input is treated as absent.

Consent: whether this visitor's click may be kept, asked only when there is one to keep.

Lifespan for the tracker: started at startup, drained at shutdown, whatever the app does.

When the app does not take part in lifespan (Django raises before its first receive; many
apps just return), the middleware completes the handshake with the server itself, so the
tracker is still started and drained.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Literal

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._attribution import Attribution
from ._context import COOKIES_KEY, SCOPE_KEY, TRACKER_KEY, current_scope
from ._cookies import (
    NINETY_DAYS,
    ClickCookies,
    CookiePolicy,
    CookieReader,
    ManagedCookies,
    valid_click_id,
)
from ._landing import Header, Landing, LandingCookies, LandingQuery, cookie_sender
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


_from_header = Attribution.from_cookie_header  # one global lookup per request, not two

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
    proxy that sets them: a visitor could send them too).

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
        callable_or_none(owner, "consent", consent)
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
        # The companion is HttpOnly: page scripts (the provider's included) never need it.
        self.signed_cookie_name = p.cookie_name + "_sig"
        self.signed_cookie = replace(self.cookie, httponly=True)
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
        self._gated = self._consent.gated

        managed = [*p.cookie_names]
        if p.partner_cookie:
            managed.append(p.partner_cookie)
        if self.signer is not None:
            managed.append(self.signed_cookie_name)
        self.forwarded_host = forwarded_host
        self.managed_cookies = ManagedCookies(self.cookie, tuple(managed), forwarded_host)
        # What our Set-Cookie headers start with: if the app set one of these, it decided.
        self._ours = (p.cookie_name.encode() + b"=", self.signed_cookie_name.encode() + b"=")

        self._reader = CookieReader(managed)
        # The lazy read behind `Attribution.click_id`: one call, as the app reads it.
        self._landing = LandingQuery(p)
        self._clicks = ClickCookies(p.cookie_names, p.partner_cookie, self._landing.accepts)
        self._read_cookies = self._clicks.read  # bound once, not on every request
        self._landing_cookies = LandingCookies(
            p, self.cookie, self.signer, forwarded=forwarded_host
        )
        # Without signing or consent nothing needs the cookies before the app asks: read them
        # lazily, so requests that never track (most of them) don't pay for parsing.
        self._lazy = self.signer is None and not self._gated
        self._where = {name: f"cookie {name}" for name in p.cookie_names}
        # Byte needles, computed once, let most requests skip parsing entirely.
        needles = [name.encode() + b"=" for name in p.cookie_names]
        if p.partner_cookie:
            needles.append(p.partner_cookie.encode() + b"=")
        self._cookie_needle = re.compile(b"|".join(map(re.escape, needles))).search
        self._needle = self._landing.needle if capture_landing else None
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
            )
        )
        # Nothing to await (no consent, no partner clicks) and nothing read eagerly: the path
        # of most deployments, written out in __call__.
        self._plain = self._lazy and self._partners is None
        self._land = Landing(
            self._landing, self._clicks, self._landing_cookies, first_click=self.first_click
        ).attribute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return

        try:
            if self._plain:
                header = None
                for name, value in scope["headers"]:
                    if name == b"cookie":
                        # HTTP/2 may split cookies over several headers.
                        header = value if header is None else header + b"; " + value
                needle = self._needle
                query = scope.get("query_string", b"")
                at = -1 if needle is None or not query or kind != "http" else query.find(needle)
                if at >= 0:
                    attribution, set_cookies = self._land(scope, query, at, header)
                else:
                    attribution = _from_header(self.provider, header, self._read_cookies)
                    set_cookies = None
            else:
                attribution, set_cookies = self._attribute(scope)
                # Consent is asked only when there is something to keep: organic traffic pays
                # nothing.
                if (
                    self._gated
                    and (
                        set_cookies is not None
                        or attribution.click_id is not None
                        or attribution.partner_raw is not None
                    )
                    and not await self._consented(scope)
                ):
                    attribution, set_cookies = self._organic(), None
                if self._partners is not None and set_cookies is None and kind == "http":
                    partner = await self._partner_landing(scope, attribution)
                    if partner is not None:
                        attribution, set_cookies = partner
        except Exception:  # never fail a request because of what a visitor sent
            logger.exception("attribution failed; handling the request without it")
            attribution, set_cookies = self._organic(), None

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

    def _organic(self) -> Attribution:
        return Attribution.from_cookie_header(self.provider)

    async def _consented(self, scope: Scope) -> bool:
        return await self._consent.allows(scope)

    def _attribute(self, scope: Scope) -> tuple[Attribution, tuple[Header, ...] | None]:
        provider = self.provider
        cookie_header = None
        for name, value in scope["headers"]:
            if name == b"cookie":
                # HTTP/2 may split cookies over several headers.
                cookie_header = value if cookie_header is None else cookie_header + b"; " + value

        query = scope.get("query_string", b"")
        landing = (
            self.capture_landing
            and query.find(self._landing.needle) >= 0
            and scope["type"] == "http"
        )
        if self._lazy and not landing:
            # Even the check for our cookie's name waits until the app asks.
            return Attribution.from_cookie_header(provider, cookie_header, self._read_cookies), None
        if cookie_header is not None and not self._cookie_needle(cookie_header):
            cookie_header = None

        cookie_click = partner_raw = None
        cookies: dict[str, str] = {}
        if cookie_header is not None:
            cookies = self._reader.read(cookie_header)
            cookie_click, partner_raw = self._pick(cookies)

        query_click = self._landing.click(query) if landing else None

        signer = self.signer
        if query_click is not None and not (self.first_click and cookie_click is not None):
            # Always (re)set, as the providers' scripts do: a landing refreshes the expiry.
            set_cookies = self._landing_cookies.headers(scope, query_click)
            return Attribution.from_landing(
                provider, query_click, partner_raw, verified=signer is not None
            ), set_cookies

        # Also on a first-click landing that keeps the older cookie: the companion keeps saying
        # what it said about that click, and the new, unused click is not signed.
        verified = False
        if signer is not None and cookie_click is not None:
            verified = signer.verify(self._signed_token(scope, cookies), cookie_click)
        attribution = Attribution(
            provider,
            click_id=cookie_click,
            source="cookie" if cookie_click else None,
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
        if self._gated and not await self._consented(scope):
            return None
        click = await partners.click_for(scope)
        if click is None:
            return None
        partner_data = click.partner_data_cookie
        landed = Attribution.from_landing(
            self.provider, click.click_id, partner_data, verified=self.signer is not None
        )
        return landed, self._landing_cookies.headers(scope, click.click_id, partner_data)

    def _pick(self, cookies: dict[str, str]) -> tuple[str | None, str | None]:
        """The first valid click cookie (current name, then legacy ones) and the partner cookie."""
        click = None
        for name in self.provider.cookie_names:
            if name in cookies:
                click = valid_click_id(cookies[name], where=self._where[name])
                if click and self.provider.accepts_click_id(click):
                    break
                click = None
        partner = self.provider.partner_cookie
        return click, cookies.get(partner) if partner else None

    def _signed_token(self, scope: Scope, cookies: dict[str, str]) -> str | None:
        token = cookies.get(self.signed_cookie_name)
        if token is None:
            # The click cookie's header may not have carried it (HTTP/2 splits cookies).
            needle = self.signed_cookie_name.encode() + b"="
            for name, value in scope["headers"]:
                if name == b"cookie" and needle in value:
                    token = self._reader.read(value).get(self.signed_cookie_name)
                    if token is not None:
                        break
        return token

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
