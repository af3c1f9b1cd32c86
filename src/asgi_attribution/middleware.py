"""``AttributionMiddleware``: a pure ASGI middleware that finds the click behind each request.

Per request it reads the provider's click cookie (or, on a landing, the click id in the URL),
attaches an :class:`Attribution` to a per-request copy of ``scope["state"]``, and on a landing
appends the first-party cookie to the app's own response. On lifespan it starts and drains the
tracker. It never fails a request: bad input is treated as absent.
"""

from __future__ import annotations

import logging
from typing import Literal
from urllib.parse import parse_qsl

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .attribution import STATE_KEY, Attribution, current_attribution
from .cookies import NINETY_DAYS, CookiePolicy, parse_cookies, valid_click_id
from .providers import Provider, get_provider
from .tracking import Tracker

__all__ = ["AttributionMiddleware"]

logger = logging.getLogger("asgi_attribution")

AttributionModel = Literal["last-click", "first-click"]


class AttributionMiddleware:
    """Capture the provider's click id on every request and deliver events on lifespan.

    Options (all keyword): ``tracker`` (default: a :class:`Tracker` for ``provider``),
    ``provider`` (``"dub"``, ``"pimms"`` or a :class:`Provider`; default: the tracker's),
    ``attribution_model`` (``"last-click"``: a new click replaces the cookie; ``"first-click"``:
    an existing cookie is kept), ``capture_landing`` (set the cookie from ``?dub_id=``), and the
    cookie attributes ``cookie_max_age``, ``cookie_path``, ``cookie_domain`` (``"auto"``),
    ``cookie_samesite``, ``cookie_secure`` (``None``: on https) and ``cookie_httponly``.

    Example:
        >>> from starlette.applications import Starlette
        >>> app = Starlette()
        >>> app.add_middleware(AttributionMiddleware, tracker=Tracker("dub"))
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
    ) -> None:
        if attribution_model not in ("last-click", "first-click"):
            raise ValueError(
                f"attribution_model must be 'last-click' or 'first-click', "
                f"got {attribution_model!r}"
            )
        self.app = app
        self.tracker = tracker if tracker is not None else Tracker(provider or "dub")
        self.provider = self.tracker.provider if provider is None else get_provider(provider)
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
        # Byte needles, computed once, let most requests skip parsing entirely.
        p = self.provider
        self._cookie_needles = tuple(name.encode() + b"=" for name in p.cookie_names)
        if p.partner_cookie:
            self._cookie_needles += (p.partner_cookie.encode() + b"=",)
        self._query_needle = p.query_param.encode() + b"="
        self._no_track = p.no_track_param

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return

        try:
            attribution, set_cookie = self._attribute(scope)
        except Exception:  # never fail a request because of what a visitor sent
            logger.exception("attribution failed; handling the request without it")
            attribution, set_cookie = Attribution(self.provider, tracker=self.tracker), None

        # A copy of the state: servers may hand every request the same dict.
        state = scope.get("state")
        state = dict(state) if state else {}
        state[STATE_KEY] = attribution
        scope = {**scope, "state": state}

        if set_cookie is not None:
            send = _CookieSender(send, set_cookie, self.provider.cookie_name + "=")
        token = current_attribution.set(attribution)
        try:
            await self.app(scope, receive, send)
        finally:
            current_attribution.reset(token)

    def _attribute(self, scope: Scope) -> tuple[Attribution, str | None]:
        provider = self.provider
        cookie_header = None
        for name, value in scope["headers"]:
            if name == b"cookie" and any(n in value for n in self._cookie_needles):
                # HTTP/2 may split cookies over several headers.
                cookie_header = value if cookie_header is None else cookie_header + b"; " + value

        cookie_click = partner_raw = None
        if cookie_header is not None:
            cookies = parse_cookies(cookie_header.decode("latin-1"))
            for name in provider.cookie_names:
                if name in cookies:
                    cookie_click = valid_click_id(cookies[name], where=f"cookie {name}")
                    if cookie_click:
                        break
            if provider.partner_cookie:
                partner_raw = cookies.get(provider.partner_cookie)

        query_click = None
        query = scope.get("query_string", b"")
        if self.capture_landing and scope["type"] == "http" and self._query_needle in query:
            query_click = self._landing_click(query)

        if query_click is not None and not (self.first_click and cookie_click is not None):
            # Always (re)set, as the providers' scripts do: a landing refreshes the expiry.
            set_cookie = self.cookie.header(
                provider.cookie_name,
                query_click,
                host=_host(scope),
                https=scope.get("scheme") in ("https", "wss"),
            )
            attribution = Attribution(
                provider,
                click_id=query_click,
                source="query",
                partner_raw=partner_raw,
                captured=True,
                tracker=self.tracker,
            )
            return attribution, set_cookie

        attribution = Attribution(
            provider,
            click_id=cookie_click,
            source="cookie" if cookie_click else None,
            partner_raw=partner_raw,
            tracker=self.tracker,
        )
        return attribution, None

    def _landing_click(self, query: bytes) -> str | None:
        params = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="replace")
        click = None
        for key, value in params:
            if self._no_track and key == self._no_track:
                return None
            # The first occurrence wins, as in the providers' scripts (URLSearchParams.get).
            if key == self.provider.query_param and click is None:
                click = value
        return valid_click_id(click, where=f"query {self.provider.query_param}")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracker = self.tracker

        async def receive_and_start() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await tracker.start()
            return message

        async def drain_then_send(message: Message) -> None:
            # Drain after the app's own shutdown handlers, which may still track events.
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    await tracker.aclose()
                except Exception:
                    logger.exception("tracker did not close cleanly")
            await send(message)

        await self.app(scope, receive_and_start, drain_then_send)


class _CookieSender:
    """Appends our Set-Cookie to the app's real response start, unless the app set it itself."""

    __slots__ = ("cookie", "prefix", "send")

    def __init__(self, send: Send, cookie: str, prefix: str) -> None:
        self.send = send
        self.cookie = cookie
        self.prefix = prefix

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            # The app's own cookie (e.g. clearing the click after a lead) takes precedence.
            if not any(v.startswith(self.prefix) for v in headers.getlist("set-cookie")):
                headers.append("set-cookie", self.cookie)
        await self.send(message)


def _host(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            return str(value.decode("latin-1"))
    server = scope.get("server")
    return str(server[0]) if server else ""
