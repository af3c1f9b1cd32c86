"""The request helpers take what a user has: any framework's request, a raw ASGI scope, None.

``get_attribution``, ``track_*`` (async and ``sync``) and ``clear_attribution`` find the
request's scope in one way (``asgi_attribution._context.scope_of``); anything that is not a
request is a ``TypeError`` naming what was passed and what to pass instead.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from typing import Any
from urllib.parse import parse_qs

import pytest
from django.core.handlers.asgi import ASGIRequest
from fastapi import Depends, FastAPI
from litestar import Litestar, get
from litestar import Request as LitestarRequest
from litestar.testing import TestClient as LitestarClient
from quart import Quart
from quart import request as quart_request
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from asgi_attribution import (
    Attribution,
    AttributionMiddleware,
    MemoryTransport,
    Tracker,
    clear_attribution,
    get_attribution,
    sync,
    track_customer,
    track_lead,
    track_sale,
)
from asgi_attribution.litestar import AttributionPlugin

from ..support import framework_apps
from .serving import asgi_client

with warnings.catch_warnings():
    # Starlette >= 1.1 warns at import that its test client would rather run on httpx2.
    warnings.filterwarnings(
        "ignore", "Using `httpx` with `starlette.testclient`", StarletteDeprecationWarning
    )
    from starlette.testclient import TestClient

COOKIE = {"cookie": "a=1; dub_id=clk_ada"}


def memory_tracker() -> tuple[Tracker, MemoryTransport]:
    memory = MemoryTransport()
    return Tracker("dub", transport=memory), memory


# -- raw ASGI: the scope is all the app has --------------------------------------------------


def raw_app(tracker: Tracker) -> AttributionMiddleware:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        user = parse_qs(scope["query_string"].decode())["u"][0]
        seen = {"scope": get_attribution(scope).click_id, "none": get_attribution(None).click_id}
        if scope["path"] == "/signup":
            result = await track_lead(scope, "Sign up", customer_external_id=user)
        elif scope["path"] == "/signup-none":
            result = await track_lead(None, "Sign up", customer_external_id=user)
        elif scope["path"] == "/signup-sync":  # blocking code in a thread, given the scope
            result = await asyncio.to_thread(
                sync.track_lead, scope, "Sign up", customer_external_id=user
            )
        else:
            await track_customer(scope, customer_id=user, customer_name="Ada")
            result = await track_sale(scope, customer_external_id=user, amount=100)
        response = JSONResponse({**seen, "status": result.status})
        seen["cleared"] = clear_attribution(scope, response, result)
        response = JSONResponse({**seen, "status": result.status}, headers=response.headers)
        await response(scope, receive, send)

    return AttributionMiddleware(app, tracker)


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/signup", "/signup-none", "/signup-sync", "/sale"])
async def test_a_raw_asgi_app_passes_its_scope(path: str) -> None:
    tracker, memory = memory_tracker()
    async with asgi_client(raw_app(tracker)) as client:
        response = await client.post(f"{path}?u=ada", headers=COOKIE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == body["none"] == "clk_ada"
    assert body["cleared"] is True  # the event was accepted: the click cookies go
    assert 'dub_id=""; Max-Age=0' in response.headers["set-cookie"]
    kinds = [type(event).__name__ for event in memory.events]
    clicks = [getattr(event, "click_id", None) for event in memory.events]
    if path == "/sale":  # a customer update, then a direct sale with the request's click
        assert kinds == ["CustomerEvent", "SaleEvent"]
        assert clicks[-1] == "clk_ada"
    else:
        assert kinds == ["LeadEvent"]
        assert clicks == ["clk_ada"]


# -- each framework's own request, through its own test client ----------------------------------


def test_starlette_request_websocket_and_none() -> None:
    async def page(request: Request) -> Response:
        return JSONResponse(
            {"request": get_attribution(request).click_id, "none": get_attribution().click_id}
        )

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"none": get_attribution(None).click_id})
        await websocket.close()

    app = Starlette(routes=[Route("/", page), WebSocketRoute("/ws", ws)])
    app.add_middleware(AttributionMiddleware, tracker=memory_tracker()[0])
    with TestClient(app) as client:
        assert client.get("/", headers=COOKIE).json() == {"request": "clk_ada", "none": "clk_ada"}
        with client.websocket_connect("/ws", headers=COOKIE) as socket:
            assert socket.receive_json() == {"none": "clk_ada"}


def test_fastapi_dependency_and_a_def_endpoint_with_none() -> None:
    app = FastAPI()
    app.add_middleware(AttributionMiddleware, tracker=memory_tracker()[0])

    @app.get("/dependency")
    async def dependency(attribution: Attribution = Depends(get_attribution)) -> Any:  # noqa: B008
        return {"click_id": attribution.click_id}

    @app.get("/threadpool")
    def threadpool() -> Any:  # the threadpool copies the request's context
        return {"click_id": get_attribution(None).click_id}

    with TestClient(app) as client:
        assert client.get("/dependency", headers=COOKIE).json() == {"click_id": "clk_ada"}
        assert client.get("/threadpool", headers=COOKIE).json() == {"click_id": "clk_ada"}


def test_litestar_request() -> None:
    @get("/")
    async def page(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        return {"request": get_attribution(request).click_id, "none": get_attribution().click_id}

    # No logging_config: Litestar's default configures the root logger for the whole process.
    app = Litestar(
        [page], plugins=[AttributionPlugin(tracker=memory_tracker()[0])], logging_config=None
    )
    with LitestarClient(app=app) as client:
        assert client.get("/", headers=COOKIE).json() == {"request": "clk_ada", "none": "clk_ada"}


@pytest.mark.anyio
async def test_quart_request_proxy() -> None:
    app = Quart(__name__)

    @app.get("/")
    async def page() -> dict[str, Any]:
        return {"request": get_attribution(quart_request).click_id}

    app.asgi_app = AttributionMiddleware(app.asgi_app, memory_tracker()[0])  # type: ignore[method-assign]
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/", headers=COOKIE)
        assert await response.get_json() == {"request": "clk_ada"}


@pytest.mark.anyio
async def test_a_django_asgi_request() -> None:
    framework_apps.django_app(memory_tracker()[0])  # configures Django's settings once

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = ASGIRequest(scope, io.BytesIO())  # what Django's ASGI handler gives a view
        result = await track_lead(request, "Sign up", customer_external_id="ada")
        body = {"click_id": get_attribution(request).click_id, "status": result.status}
        await JSONResponse(body)(scope, receive, send)

    tracker, memory = memory_tracker()
    async with asgi_client(AttributionMiddleware(app, tracker)) as client:
        response = await client.get("/", headers=COOKIE)
    assert response.json()["click_id"] == "clk_ada"
    assert [event.click_id for event in memory.events] == ["clk_ada"]  # type: ignore[attr-defined]


# -- anything else: a TypeError saying what was passed and what to pass ------------------------


def wsgi_request() -> Any:
    framework_apps.django_app(memory_tracker()[0])  # configures Django's settings once
    from django.test import RequestFactory

    return RequestFactory().post("/signup")  # a django.core.handlers.wsgi.WSGIRequest


def helpers(tracker: Tracker) -> dict[str, Any]:
    return {
        "get_attribution": get_attribution,
        "track_lead": lambda r: track_lead(r, "Sign up", customer_external_id="u"),
        "track_sale": lambda r: track_sale(r, customer_external_id="u", amount=100),
        "track_customer": lambda r: track_customer(r, customer_id="u"),
        "sync.track_lead": lambda r: sync.track_lead(r, "Sign up", customer_external_id="u"),
        "sync.track_customer": lambda r: sync.track_customer(r, customer_id="u"),
        "clear_attribution": lambda r: clear_attribution(r, Response(), None),  # type: ignore[arg-type]
    }


HELPERS = list(helpers(Tracker("dub", transport=MemoryTransport())))


@pytest.mark.parametrize("helper", [h for h in HELPERS if h != "clear_attribution"])
def test_a_django_wsgi_request_the_wsgi_middleware_never_saw_names_it(helper: str) -> None:
    """Served through asgi_attribution.wsgi.AttributionMiddleware it works (tests/frameworks/
    test_wsgi.py); without it, the error names that middleware."""
    call = helpers(memory_tracker()[0])[helper]
    with pytest.raises(RuntimeError) as raised:
        call(wsgi_request())
    assert "asgi_attribution.wsgi.AttributionMiddleware(app, tracker=tracker)" in str(raised.value)


@pytest.mark.parametrize("helper", HELPERS)
@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("a string", "got str"),
        (object(), "got object"),
        ({"type": "lifespan"}, 'got a dict without an ASGI scope\'s "type"'),
        ({"headers": []}, 'got a dict without an ASGI scope\'s "type"'),
    ],
)
def test_anything_else_is_a_type_error_naming_it(helper: str, given: Any, named: str) -> None:
    call = helpers(memory_tracker()[0])[helper]
    with pytest.raises(TypeError, match="expected the request") as raised:
        call(given)
    assert named in str(raised.value)
    assert "raw ASGI scope" in str(raised.value) and "None for the request" in str(raised.value)


def test_none_outside_a_request_says_what_to_pass() -> None:
    with pytest.raises(RuntimeError, match="no request being handled: pass the request"):
        get_attribution(None)
    with pytest.raises(RuntimeError, match="no request being handled: pass the request"):
        track_lead(None, "Sign up", customer_external_id="u")


def test_a_scope_the_middleware_never_saw_names_the_middleware() -> None:
    scope = {"type": "http", "headers": []}
    with pytest.raises(RuntimeError, match="add AttributionMiddleware"):
        get_attribution(scope)
    with pytest.raises(RuntimeError, match="add AttributionMiddleware"):
        track_lead(scope, "Sign up", customer_external_id="u")
    assert scope == {"type": "http", "headers": []}  # nothing written into it
