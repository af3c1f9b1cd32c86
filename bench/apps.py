"""The apps compared: one bare Starlette app, wrapped by each middleware in turn.

Every variant serves the same endpoint (a 2-byte text response) so the only difference is the
middleware. Used in-process by ``middleware_inproc`` and under uvicorn by ``middleware_server``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

CLICK_ID = "cm3kf8x2a0001bench9yz7q"
OTHER_COOKIES = "; ".join(
    f"{name}={value}"
    for name, value in [
        ("_ga", "GA1.1.1234567890.1700000000"),
        ("_gid", "GA1.1.987654321.1700000000"),
        ("_fbp", "fb.1.1700000000000.1234567890"),
        ("csrftoken", "q8Xv2kLmN4pR7sT1uW3yZ5bC6dE9fG0h"),
        ("theme", "dark"),
        ("lang", "en-GB"),
        ("ph_phc_project_posthog", "%7B%22distinct_id%22%3A%22018c%22%7D"),
        ("intercom-id-abc", "3f1b2c4d-5e6f-7a8b-9c0d-e1f2a3b4c5d6"),
        ("cookie_consent", "all"),
        ("__stripe_mid", "1a2b3c4d-5e6f-7a8b-9c0d-e1f2a3b4c5d6e7"),
    ]
)
# The click cookie sits in the middle of ten others, as a browser would send it.
COOKIE_HEADER = OTHER_COOKIES.replace("; theme=", f"; dub_id={CLICK_ID}; theme=", 1)

BASE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"www.example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-GB,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate, br"),
]

# name -> (path, query string, extra headers)
CASES: dict[str, tuple[str, bytes, list[tuple[bytes, bytes]]]] = {
    "no cookie": ("/", b"", []),
    "dub_id among 10 cookies": ("/", b"", [(b"cookie", COOKIE_HEADER.encode())]),
    "landing ?dub_id= (sets cookie)": (
        "/pricing",
        f"dub_id={CLICK_ID}&utm_source=newsletter".encode(),
        [],
    ),
}


async def endpoint(request: Request) -> Response:
    return PlainTextResponse("ok")


class PassThrough:
    """The floor: a pure ASGI middleware that does nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


_REQUEST: ContextVar[Any] = ContextVar("bench_request")
_COOKIE = (b"set-cookie", f"dub_id={CLICK_ID}; Path=/; Max-Age=7776000; SameSite=Lax".encode())


class OneHeader:
    """The floor for ours (issue 16): per-request state (its own copy of the state dict, a
    ContextVar set and reset) and, on a landing, one precomputed header appended to the
    response start. Nothing is parsed beyond finding ``dub_id=`` in the query."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["state"] = {**scope.get("state", {}), "bench": True}
        token = _REQUEST.set(scope)
        try:
            if b"dub_id=" not in scope["query_string"]:
                await self.app(scope, receive, send)
                return

            async def wrapped(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), _COOKIE]
                await send(message)

            await self.app(scope, receive, wrapped)
        finally:
            _REQUEST.reset(token)


class HandWrittenCookie(BaseHTTPMiddleware):
    """What a user writes without this package: read the cookie into ``request.state``."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        request.state.dub_id = request.cookies.get("dub_id") or request.query_params.get("dub_id")
        return await call_next(request)


def _ours() -> list[Middleware]:
    from asgi_attribution import AttributionMiddleware, Tracker
    from asgi_attribution.testing import MemoryTransport

    tracker = Tracker("dub", transport=MemoryTransport())
    return [Middleware(AttributionMiddleware, tracker=tracker)]


class ReadsClick:
    """Inside ours: reads the click id as a tracking endpoint would (our cookie read is lazy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["asgi_attribution"].click_id  # noqa: B018 - the read is the point
        await self.app(scope, receive, send)


def _ours_reading() -> list[Middleware]:
    return [*_ours(), Middleware(ReadsClick)]


def _session() -> list[Middleware]:
    from starlette.middleware.sessions import SessionMiddleware

    return [Middleware(SessionMiddleware, secret_key="bench-secret-key-0123456789")]


def _correlation() -> list[Middleware]:
    from asgi_correlation_id import CorrelationIdMiddleware

    return [Middleware(CorrelationIdMiddleware)]


def _context() -> list[Middleware]:
    from starlette_context.middleware import RawContextMiddleware

    return [Middleware(RawContextMiddleware)]


# label -> factory of the middleware list; "bare" first, it is the reference.
VARIANTS: dict[str, Callable[[], list[Middleware]]] = {
    "bare app": list,
    "pass-through (floor)": lambda: [Middleware(PassThrough)],
    "one-header middleware (floor, issue 16)": lambda: [Middleware(OneHeader)],
    "asgi-attribution": _ours,
    "asgi-attribution + app reads click_id": _ours_reading,
    "SessionMiddleware": _session,
    "asgi-correlation-id": _correlation,
    "starlette-context (raw)": _context,
    "BaseHTTPMiddleware by hand": lambda: [Middleware(HandWrittenCookie)],
}
OURS = "asgi-attribution"
ONE_HEADER = "one-header middleware (floor, issue 16)"
BARE = "bare app"


def build(variant: str) -> Starlette:
    routes = [Route("/", endpoint), Route("/pricing", endpoint)]
    return Starlette(routes=routes, middleware=VARIANTS[variant]())


def scope_for(case: str) -> dict[str, Any]:
    path, query, extra = CASES[case]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": BASE_HEADERS + extra,
        "client": ("203.0.113.7", 51234),
        "server": ("www.example.com", 443),
        "state": {},
    }
