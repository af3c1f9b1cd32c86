"""Where per-request data and the middleware's services live, so every module can find them.

Imports nothing from the package (asgi-correlation-id's ``context.py`` is the model), so no
import circle can pass through it. The middleware writes these keys into each request's own
scope (never into ``scope["state"]``, which a server may share between requests):

- ``scope[SCOPE_KEY]``: this request's :class:`~asgi_attribution.Attribution` (plain data).
- ``scope[SERVICES_KEY]``: the middleware's :class:`Services` (its tracker, which the
  ``track_*`` helpers use; the cookies it manages, for ``clear_attribution``; what signs and
  restores round-trip tokens). One key, written once per request.

The WSGI middleware builds such a scope from the WSGI ``environ`` and keeps it there, under
``environ[ENVIRON_KEY]``, so the same helpers find it from the environ, a Flask ``request``
(``request.environ``) or a Django ``HttpRequest`` (``request.META``).

``current_scope`` is the scope of the request being handled, for code that has no request
argument (decorators, helpers called deep in a handler). :func:`scope_of` turns whatever a
helper was given (a request, a raw scope, ``None``) into that scope, in one place.

Example:
    >>> current_scope.get() is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol, TypeAlias

__all__ = [
    "ENVIRON_KEY",
    "MIDDLEWARE_HINT",
    "SCOPE_KEY",
    "SERVICES_KEY",
    "TEST_CLIENT_HINT",
    "HasEnviron",
    "HasMeta",
    "HasScope",
    "RequestLike",
    "Services",
    "current_scope",
    "middleware_hint",
    "scope_of",
    "services_of",
]


SCOPE_KEY = "asgi_attribution"

SERVICES_KEY = "asgi_attribution.services"


class Services(Protocol):
    """What the middleware lends the request helpers, beside the request's attribution.

    ``tracker``: the :class:`~asgi_attribution.Tracker` the ``track_*`` helpers use;
    ``managed_cookies``: the cookies ``clear_attribution`` deletes; ``round_trips``: what signs
    and restores round-trip tokens (``None`` without ``signing_secrets``).

    Example:
        >>> class Lent:
        ...     tracker, managed_cookies, round_trips = "tracker", None, None
        >>> services: Services = Lent()
        >>> services.tracker
        'tracker'
    """

    @property
    def tracker(self) -> Any:
        """The tracker of the ``track_*`` helpers."""

    @property
    def managed_cookies(self) -> Any:
        """The cookies ``clear_attribution`` deletes."""

    @property
    def round_trips(self) -> Any:
        """What signs and restores round-trip tokens, or ``None``."""


def services_of(scope: Mapping[str, Any]) -> Services | None:
    """The middleware's :class:`Services` on ``scope``, or ``None`` (no middleware saw it).

    Example:
        >>> services_of({}) is None
        True
    """
    services: Services | None = scope.get(SERVICES_KEY)
    return services


#: Where the WSGI middleware keeps the request's scope in the WSGI environ.
ENVIRON_KEY = "asgi_attribution.scope"

#: What to say when something is read from a request the middleware never saw.
MIDDLEWARE_HINT = (
    "add AttributionMiddleware to the app (app.add_middleware(AttributionMiddleware, "
    "tracker=tracker); a WSGI app: asgi_attribution.wsgi.AttributionMiddleware(app, "
    "tracker=tracker))"
)

#: What to say when a test client went around the ASGI middleware (Django's Client, AsyncClient).
TEST_CLIENT_HINT = (
    "Django's test Client and AsyncClient call the Django app directly, around every ASGI or "
    "WSGI middleware, so AttributionMiddleware never saw this request even if it wraps the app. "
    "Send test requests through the wrapped application instead: httpx.AsyncClient("
    "transport=httpx.ASGITransport(app=application)) for ASGI, werkzeug.test.Client("
    "application) for WSGI, with asgi_attribution.testing's capture_events() or the "
    "attribution_events fixture (see docs/testing.md)"
)


def middleware_hint(scope: Mapping[str, Any]) -> str:
    """How to fix a request the middleware never saw: add it, or stop going around it.

    A Django ``AsyncClient`` request (host ``testserver``, and a ``str`` query string where
    ASGI servers and httpx give bytes) or test ``Client`` request (a WSGI environ of server
    ``testserver``) went around the middleware.

    Example:
        >>> django = {"headers": [(b"host", b"testserver")], "query_string": ""}
        >>> middleware_hint(django)[:31]
        "Django's test Client and AsyncC"
        >>> middleware_hint({"type": "http", "query_string": b""}) == MIDDLEWARE_HINT
        True
    """
    hosts = [value for name, value in scope.get("headers") or () if name == b"host"]
    server = scope.get("server") or ("",)
    from_django = hosts == [b"testserver"] or server[0] == "testserver"
    if from_django and isinstance(scope.get("query_string"), str):
        return TEST_CLIENT_HINT
    if "wsgi.version" in scope and scope.get("SERVER_NAME") == "testserver":
        # Django's test Client or RequestFactory: either may be what went around it.
        return f"{TEST_CLIENT_HINT}; outside a test, {MIDDLEWARE_HINT}"
    return MIDDLEWARE_HINT


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


class HasEnviron(Protocol):
    """A WSGI request carrying its environ: Flask's and werkzeug's (``request.environ``).

    Example:
        >>> from werkzeug.test import EnvironBuilder
        >>> request: HasEnviron = EnvironBuilder("/").get_request()
        >>> request.environ["PATH_INFO"]
        '/'
    """

    @property
    def environ(self) -> MutableMapping[str, Any]:
        """The WSGI environ the WSGI middleware wrote into."""


class HasMeta(Protocol):
    """Django's ``HttpRequest`` under WSGI: ``request.META`` is the WSGI environ.

    Example:
        >>> class Request:
        ...     META = {"wsgi.version": (1, 0)}
        >>> request: HasMeta = Request()
        >>> request.META["wsgi.version"]
        (1, 0)
    """

    @property
    def META(self) -> MutableMapping[str, Any]:
        """The WSGI environ the WSGI middleware wrote into."""


#: What the request helpers take: a request object carrying its ASGI scope or WSGI environ, or
#: the scope or environ itself.
RequestLike: TypeAlias = HasScope | HasEnviron | HasMeta | MutableMapping[str, Any]

_CONNECTIONS = ("http", "websocket")


def scope_of(request: RequestLike | None) -> MutableMapping[str, Any] | None:
    """The ASGI scope of ``request``; for ``None``, the request being handled (``None`` if none).

    ``request`` is any object with an ASGI ``.scope`` mapping (Starlette's and FastAPI's
    ``Request``, ``WebSocket`` and ``HTTPConnection``, Django's ``ASGIRequest``, Litestar's,
    Quart's), a raw ASGI scope of an HTTP or WebSocket connection, or, served through the WSGI
    middleware, a WSGI ``environ``, a Flask ``request`` (its ``.environ``) or a Django
    ``HttpRequest`` (its ``.META``). Anything else raises a ``TypeError`` that names what was
    passed and what to pass instead.

    Example:
        >>> scope = {"type": "http", "headers": []}
        >>> scope_of(scope) is scope
        True
        >>> scope_of(None) is None  # no request being handled here
        True
        >>> scope_of("a string")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: expected the request (an object with an ASGI .scope, ...; got str
    """
    if request is None:
        return current_scope.get()
    # The attribute first: Starlette's requests are mappings of their scope's keys too.
    scope = getattr(request, "scope", None)
    if isinstance(scope, MutableMapping):
        return scope
    if isinstance(request, MutableMapping) and request.get("type") in _CONNECTIONS:
        return request
    # WSGI: the environ itself, Flask's request.environ, Django's request.META (the environ).
    environ = request if isinstance(request, Mapping) else None
    for attribute in ("environ", "META"):
        if environ is None:
            environ = getattr(request, attribute, None)
    if isinstance(environ, MutableMapping) and "wsgi.version" in environ:
        # Without the WSGI middleware: the environ itself, where nothing is found (and the
        # error names the middleware to add).
        found = environ.get(ENVIRON_KEY)
        return found if isinstance(found, MutableMapping) else environ
    kind = type(request)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    if isinstance(request, Mapping):
        got = f'a {name} without an ASGI scope\'s "type" of "http" or "websocket"'
    else:
        got = name
    raise TypeError(
        "expected the request (an object with an ASGI .scope, such as a Starlette, FastAPI, "
        "Litestar, Quart or Django ASGI request), a raw ASGI scope of an HTTP or WebSocket "
        "connection, a WSGI environ (or a Flask or Django request) served through "
        "asgi_attribution.wsgi.AttributionMiddleware, or None for the request being handled; "
        f"got {got}"
    )
