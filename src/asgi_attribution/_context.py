"""Where per-request data and the middleware's services live, so every module can find them.

Imports nothing from the package (asgi-correlation-id's ``context.py`` is the model), so no
import circle can pass through it. The middleware writes these keys into each request's own
scope (never into ``scope["state"]``, which a server may share between requests):

- ``scope[SCOPE_KEY]``: this request's :class:`~asgi_attribution.Attribution` (plain data).
- ``scope[TRACKER_KEY]``: the middleware's tracker, which the ``track_*`` helpers use.
- ``scope[COOKIES_KEY]``: the cookies the middleware manages, for ``clear_attribution``.

``current_scope`` is the scope of the request being handled, for code that has no request
argument (decorators, helpers called deep in a handler).

Example:
    >>> current_scope.get() is None
    True
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = [
    "COOKIES_KEY",
    "MIDDLEWARE_HINT",
    "SCOPE_KEY",
    "TRACKER_KEY",
    "HasScope",
    "current_scope",
]


SCOPE_KEY = "asgi_attribution"

TRACKER_KEY = "asgi_attribution.tracker"

COOKIES_KEY = "asgi_attribution.cookies"

#: What to say when something is read from a request the middleware never saw.
MIDDLEWARE_HINT = (
    "add AttributionMiddleware to the app (app.add_middleware(AttributionMiddleware, "
    "tracker=tracker))"
)

current_scope: ContextVar[MutableMapping[str, Any] | None] = ContextVar(
    "asgi_attribution_scope", default=None
)


class HasScope(Protocol):
    """Any request object that carries its ASGI scope: Starlette's, Django's ``ASGIRequest``,
    Litestar's, Quart's (``request.scope``).

    Example:
        >>> from starlette.requests import Request
        >>> request: HasScope = Request({"type": "http"})
        >>> request.scope["type"]
        'http'
    """

    @property
    def scope(self) -> MutableMapping[str, Any]:
        """The ASGI scope the middleware wrote into."""
