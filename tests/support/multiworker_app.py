"""A signup app for the multi-worker test: uvicorn imports it in each worker process."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_attribution import AttributionMiddleware, RetryPolicy, Tracker, track_lead

# Built at import in the parent and in every worker: must not start anything yet.
tracker = Tracker(
    "dub",
    api_key="dub_test_key",
    base_url=os.environ["FAKE_PROVIDER_URL"],
    retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1),
)


async def signup(request: Request) -> Response:
    result = await track_lead(request, "Sign up", customer_external_id=request.query_params["u"])
    return JSONResponse({"status": result.status, "pid": os.getpid()})


app = AttributionMiddleware(Starlette(routes=[Route("/signup", signup, methods=["POST"])]), tracker)
