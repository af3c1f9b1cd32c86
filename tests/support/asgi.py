"""Helpers shared by the tests: a small app, in-process clients and raw ASGI calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from asgi_attribution import AttributionMiddleware, MemoryTransport, Tracker, get_attribution

KEY = "dub_test_key"


async def whoami(request: Request) -> Response:
    a = get_attribution(request)
    partner = a.partner
    return JSONResponse(
        {
            "click_id": a.click_id,
            "source": a.source,
            "captured": a.captured,
            "partner": partner.name if partner else None,
            "discount": a.discount.amount if a.discount else None,
        }
    )


async def app_cookie(request: Request) -> Response:
    response = JSONResponse({"ok": True})
    response.set_cookie("session", "s1", httponly=True)
    response.headers["x-app"] = "yes"
    return response


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"click_id": get_attribution(websocket).click_id})
    await websocket.close()


def make_app(tracker: Tracker | None = None, **options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/", whoami),
            Route("/app-cookie", app_cookie),
            WebSocketRoute("/ws", ws_endpoint),
        ]
    )
    app.add_middleware(
        AttributionMiddleware,
        tracker=tracker or Tracker("dub", transport=MemoryTransport()),
        **options,
    )
    return app


@asynccontextmanager
async def client_for(
    app: Any, base_url: str = "http://testserver", lifespan: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``app`` in-process, inside its lifespan."""
    if lifespan:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                yield client
    else:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


async def raw_get(
    app: Any, headers: list[tuple[bytes, bytes]], query: bytes = b"", **scope: Any
) -> tuple[int, bytes]:
    """A GET to ``/`` as a raw ASGI call (bytes a client library would refuse to send).

    Yields to the loop on every receive and send, so concurrent calls interleave. ``scope``
    overrides or adds scope keys (``state``, ``scheme``, ...). Returns status and body.
    """
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        messages.append(message)

    await app(
        {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": query,
            "headers": headers,
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 1234),
            **scope,
        },
        receive,
        send,
    )
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return int(messages[0]["status"]), body


async def websocket_sent(app: Any, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> Any:
    """Open a WebSocket to ``/ws`` with a raw ASGI call; the JSON of the first message sent."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "websocket.close":
            await inbox.put({"type": "websocket.disconnect", "code": 1000})

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": query,
        "headers": headers,
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1),
        "subprotocols": [],
    }
    await app(scope, inbox.get, send)
    return json.loads(next(m for m in messages if m["type"] == "websocket.send")["text"])


AppFactory = Callable[..., Starlette]
