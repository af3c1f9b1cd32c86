"""An app served by ``uvicorn --factory`` in the SIGKILL test (imported by uvicorn, not pytest).

``POST /signup?u=<id>`` tracks one lead and answers its status and event id. The provider's URL
comes from ``FAKE_PROVIDER_URL`` (read in :func:`create`, never at import).
"""

from __future__ import annotations

import logging
import os
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_attribution import AttributionMiddleware, RetryPolicy, Tracker, track_lead


async def signup(request: Request) -> JSONResponse:
    user = request.query_params["u"]
    result = await track_lead(request, "Sign up", customer_external_id=user)
    return JSONResponse({"status": result.status, "event_id": result.event_id})


def create() -> AttributionMiddleware:
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(message)s"
    )
    tracker = Tracker(
        "dub",
        api_key="dub_test_key",
        base_url=os.environ["FAKE_PROVIDER_URL"],
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1),
        timeout=120,
        concurrency=2,
        shutdown_timeout=60,
    )
    return AttributionMiddleware(
        Starlette(routes=[Route("/signup", signup, methods=["POST"])]), tracker
    )
