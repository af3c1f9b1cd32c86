"""Apps in the deployment shapes where nobody passes lifespan down, served by uvicorn in tests.

Each tracks one lead per ``POST /signup?u=<id>`` (click id from the ``dub_id`` cookie) and
answers the ``TrackResult.status``. The provider's URL comes from ``FAKE_PROVIDER_URL``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from asgi_attribution import AttributionMiddleware, RetryPolicy, Tracker, track_lead


def tracker() -> Tracker:
    return Tracker(
        "dub",
        api_key="dub_test_key",
        base_url=os.environ["FAKE_PROVIDER_URL"],
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1),
    )


async def signup(request: Request) -> Response:
    result = await track_lead(request, "Sign up", customer_external_id=request.query_params["u"])
    return JSONResponse({"status": result.status})


routes = [Route("/signup", signup, methods=["POST"])]


async def django_like_inner(scope: Scope, receive: Receive, send: Send) -> None:
    """Like ``get_asgi_application()``: raises on lifespan before its first receive."""
    if scope["type"] != "http":
        raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")
    await Starlette(routes=routes)(scope, receive, send)


#: Django's shape: the inner app rejects lifespan; the middleware must finish it.
django_like = AttributionMiddleware(django_like_inner, tracker())

#: A plain app, run with ``--lifespan off`` (or on a server without lifespan).
plain = AttributionMiddleware(Starlette(routes=routes), tracker())

#: The middleware on a mounted sub-app only: Starlette passes no lifespan to mounts.
mounted = Starlette(
    routes=[Mount("/", app=AttributionMiddleware(Starlette(routes=routes), tracker()))]
)
