"""One small app per framework, each following its recipe in docs/frameworks.md.

Every app answers ``POST /signup?u=<id>`` (an async handler, ``await track_lead``) and
``POST /signup-sync?u=<id>`` (a sync handler in the framework's threadpool,
``asgi_attribution.sync.track_lead``) with ``{"status": <TrackResult.status>}``; the click id
comes from the ``dub_id`` cookie. Each factory takes a tracker, or builds one for the fake
provider at ``FAKE_PROVIDER_URL`` (how ``uvicorn --factory`` runs them in a subprocess).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from fastapi import Depends, FastAPI
from litestar import Litestar, post
from litestar import Request as LitestarRequest
from quart import Quart
from quart import request as quart_request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from asgi_attribution import (
    Attribution,
    AttributionMiddleware,
    RetryPolicy,
    Tracker,
    get_attribution,
    sync,
    track_lead,
)
from asgi_attribution.litestar import AttributionPlugin

KEY = "dub_test_key"


def fake_tracker() -> Tracker:
    """A tracker for the fake provider at ``FAKE_PROVIDER_URL``, with quick retries."""
    return Tracker(
        "dub",
        api_key=KEY,
        base_url=os.environ["FAKE_PROVIDER_URL"],
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1),
    )


# -- Django: AttributionMiddleware(get_asgi_application()); the middleware finishes lifespan ----


async def django_signup(request: HttpRequest) -> HttpResponse:
    result = await track_lead(request, "Sign up", customer_external_id=request.GET["u"])
    return JsonResponse({"status": result.status})


def django_signup_sync(request: HttpRequest) -> HttpResponse:
    result = sync.track_lead(request, "Sign up", customer_external_id=request.GET["u"])
    return JsonResponse({"status": result.status})


urlpatterns = [
    path("signup", django_signup),
    path("signup-sync", django_signup_sync),
]


def django_app(tracker: Tracker | None = None) -> Any:
    if not settings.configured:
        settings.configure(
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            SECRET_KEY="not-a-secret",
            USE_TZ=True,
        )
        django.setup()
    from django.core.asgi import get_asgi_application

    return AttributionMiddleware(get_asgi_application(), tracker or fake_tracker())


# -- Litestar: AttributionPlugin installs the middleware and runs the tracker with the app ------


def litestar_app(tracker: Tracker | None = None) -> Any:
    @post("/signup", status_code=200)
    async def signup(request: LitestarRequest[Any, Any, Any]) -> dict[str, str]:
        u = request.query_params["u"]
        result = await track_lead(request, "Sign up", customer_external_id=u)
        return {"status": result.status}

    @post("/signup-sync", status_code=200, sync_to_thread=True)
    def signup_sync(request: LitestarRequest[Any, Any, Any]) -> dict[str, str]:
        u = request.query_params["u"]
        result = sync.track_lead(request, "Sign up", customer_external_id=u)
        return {"status": result.status}

    plugin = AttributionPlugin(tracker=tracker or fake_tracker())
    return Litestar([signup, signup_sync], plugins=[plugin], logging_config=None)


# -- Quart: wrap app.asgi_app; Quart passes lifespan down -----------------------------------------


def quart_app(tracker: Tracker | None = None) -> Any:
    app = Quart(__name__)

    @app.post("/signup")
    async def signup() -> dict[str, str]:
        u = quart_request.args["u"]
        result = await track_lead(quart_request, "Sign up", customer_external_id=u)
        return {"status": result.status}

    @app.post("/signup-sync")
    def signup_sync() -> dict[str, str]:
        u = quart_request.args["u"]
        result = sync.track_lead(quart_request, "Sign up", customer_external_id=u)
        return {"status": result.status}

    app.asgi_app = AttributionMiddleware(app.asgi_app, tracker or fake_tracker())
    return app


# -- Starlette: app.add_middleware ----------------------------------------------------------------


def starlette_app(tracker: Tracker | None = None) -> Any:
    async def signup(request: Request) -> Response:
        u = request.query_params["u"]
        result = await track_lead(request, "Sign up", customer_external_id=u)
        return JSONResponse({"status": result.status})

    def signup_sync(request: Request) -> Response:
        u = request.query_params["u"]
        result = sync.track_lead(request, "Sign up", customer_external_id=u)
        return JSONResponse({"status": result.status})

    return Starlette(
        routes=[
            Route("/signup", signup, methods=["POST"]),
            Route("/signup-sync", signup_sync, methods=["POST"]),
        ],
        middleware=[Middleware(AttributionMiddleware, tracker=tracker or fake_tracker())],
    )


# -- FastAPI: add_middleware, Depends(get_attribution), async and def endpoints -------------------


def fastapi_app(tracker: Tracker | None = None) -> Any:
    app = FastAPI()
    app.add_middleware(AttributionMiddleware, tracker=tracker or fake_tracker())

    @app.post("/signup")
    async def signup(
        u: str,
        request: Request,
        attribution: Attribution = Depends(get_attribution),  # noqa: B008 (FastAPI's idiom)
    ) -> dict[str, Any]:
        result = await track_lead(request, "Sign up", customer_external_id=u)
        return {"status": result.status, "click_id": attribution.click_id}

    @app.post("/signup-sync")
    def signup_sync(u: str, request: Request) -> dict[str, Any]:
        result = sync.track_lead(request, "Sign up", customer_external_id=u)
        return {"status": result.status}

    return app


# -- Raw ASGI: wrap the callable; track_lead(None, ...) finds the request being handled -----------


def raw_app(tracker: Tracker | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # a bare app that speaks lifespan, as the spec says
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        assert scope["type"] == "http"
        u = parse_qs(scope["query_string"].decode()).get("u", [""])[0]
        if scope["path"] == "/signup":
            result = await track_lead(None, "Sign up", customer_external_id=u)
        elif scope["path"] == "/signup-sync":  # blocking code in a thread, with this context
            result = await asyncio.to_thread(
                sync.track_lead, None, "Sign up", customer_external_id=u
            )
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps({"status": result.status}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return AttributionMiddleware(app, tracker or fake_tracker())
