"""Shared fixtures: apps driven through real ASGI calls (httpx.ASGITransport + LifespanManager)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from asgi_attribution import AttributionMiddleware, MemoryTransport, Tracker, get_attribution


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


AppFactory = Callable[..., Starlette]
