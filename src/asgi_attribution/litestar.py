"""Litestar: ``AttributionPlugin`` installs the middleware and runs the tracker with the app.

Litestar builds its middleware around each route and never passes lifespan down to it, so
``DefineMiddleware(AttributionMiddleware, ...)`` alone leaves the tracker without an owner (it
then sends every event inline). The plugin adds the middleware (outermost) and ties the
tracker to the app's own lifespan: started before any other lifespan context or startup hook,
drained after every shutdown hook, which may still track events.

Only this module imports Litestar (``pip install "asgi-attribution[litestar]"``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp
from starlette.types import Receive, Scope, Send

from ._middleware import AttributionMiddleware
from ._tracker import Tracker

__all__ = ["AttributionPlugin"]


async def _unused(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    """The app of the middleware built only to check the options."""


class AttributionPlugin(InitPluginProtocol):
    """Add :class:`AttributionMiddleware` to a Litestar app and start/drain ``tracker`` with it.

    ``middleware_options`` are the middleware's keyword options (``provider``,
    ``cookie_domain``, ``forwarded_host``, ...), checked here, at construction. Without a
    ``tracker``, one :class:`Tracker` for the middleware's ``provider`` is made for the app.

    Example:
        >>> from litestar import Litestar, Request, post
        >>> from litestar.testing import TestClient
        >>> from asgi_attribution import MemoryTransport, Tracker, track_lead
        >>> @post("/signup")
        ... async def signup(request: Request) -> dict:
        ...     result = await track_lead(request, "Sign up", customer_external_id="user_42")
        ...     return {"status": result.status}
        >>> memory = MemoryTransport()
        >>> plugin = AttributionPlugin(tracker=Tracker("dub", transport=memory))
        >>> app = Litestar([signup], plugins=[plugin], logging_config=None)  # logging as is
        >>> with TestClient(app) as client:
        ...     client.post("/signup", headers={"cookie": "dub_id=clk_1"}).json()
        {'status': 'sent'}
        >>> [lead.click_id for lead in memory.events]
        ['clk_1']
    """

    __slots__ = ("middleware_options", "tracker")

    def __init__(self, tracker: Tracker | None = None, **middleware_options: Any) -> None:
        if tracker is None:
            tracker = Tracker(middleware_options.get("provider") or "dub")
        elif not isinstance(tracker, Tracker):
            raise TypeError(f"AttributionPlugin(tracker=...) must be a Tracker, got {tracker!r}")
        AttributionMiddleware(_unused, tracker, **middleware_options)  # bad options raise here
        self.tracker = tracker
        self.middleware_options = middleware_options

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Install the middleware (outermost) and the tracker's lifespan on ``app_config``.

        Example:
            >>> from asgi_attribution import MemoryTransport, Tracker
            >>> config = AttributionPlugin(Tracker(transport=MemoryTransport())).on_app_init(
            ...     AppConfig())
            >>> config.middleware[0].middleware.__name__, len(config.on_shutdown)
            ('AttributionMiddleware', 1)
        """
        factory = cast("Callable[..., ASGIApp]", AttributionMiddleware)  # Starlette's ASGI types
        middleware = DefineMiddleware(factory, tracker=self.tracker, **self.middleware_options)
        app_config.middleware.insert(0, middleware)
        # Lifespan contexts are entered before startup hooks, and shutdown hooks run after
        # the contexts exit: start in the first context, drain in the last shutdown hook.
        app_config.lifespan.insert(0, self._started)
        app_config.on_shutdown.append(self.tracker.aclose)
        return app_config

    @asynccontextmanager
    async def _started(self, app: Litestar) -> AsyncIterator[None]:
        await self.tracker.start()
        yield
