"""Memory: bytes per queued event, and an app process's RSS after many tracked requests.

Each measurement runs in a fresh subprocess so earlier work doesn't pollute its heap.

- Queued: a ``BackgroundTransport`` over a transport that never completes a delivery holds
  100,000 leads in its queue; bytes/event from ``tracemalloc`` (Python allocations) and from the
  RSS delta (what the OS sees).
- App: a Starlette app with the middleware and a signup endpoint that calls ``track_lead``,
  driven by direct ASGI calls (``dub_id`` cookie on every request), with background delivery
  through a transport that discards events (no network, so 100,000 requests fit the time
  budget). RSS is sampled every 10,000 requests: flat means no growth beyond the queue.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tracemalloc
from typing import Any

from .common import PYTHON, ROOT, rss_bytes


def _transports() -> tuple[Any, Any]:
    from asgi_attribution.transports._background import BackgroundTransport
    from asgi_attribution.transports._base import TrackResult, Transport

    class Stuck(Transport):
        """Never finishes a delivery: everything after the first event stays queued."""

        async def attempt(self, delivery: Any) -> Any:
            await asyncio.Event().wait()
            return TrackResult("sent", delivery.event)

    class Discard(Transport):
        async def attempt(self, delivery: Any) -> Any:
            return TrackResult("sent", delivery.event)

    return BackgroundTransport, (Stuck, Discard)


async def _queued(n: int, use_tracemalloc: bool) -> dict[str, Any]:
    from asgi_attribution import Tracker

    background, (stuck, _) = _transports()
    transport = background(stuck(), queue_size=n + 1000, concurrency=1)
    tracker = Tracker("dub", transport=transport)
    await tracker.start()

    async def track(i: int) -> None:
        result = await tracker.track_lead(
            click_id="cm3kf8x2a0001bench9yz7q", event_name="Sign up", customer_external_id=f"u{i}"
        )
        assert result.status == "queued", result

    for i in range(1000):  # warm: imports, caches, the worker holding its one event
        await track(i)
    gc.collect()
    if use_tracemalloc:
        tracemalloc.start()
    before_traced = tracemalloc.get_traced_memory()[0] if use_tracemalloc else 0
    before_rss = rss_bytes()
    for i in range(n):
        await track(1000 + i)
    gc.collect()
    after_rss = rss_bytes()
    after_traced = tracemalloc.get_traced_memory()[0] if use_tracemalloc else 0
    pending = transport.pending
    if pending < n:
        raise RuntimeError(f"only {pending} of {n} events queued")
    if use_tracemalloc:
        return {"bytes_per_event": round((after_traced - before_traced) / n)}
    return {"bytes_per_event": round((after_rss - before_rss) / n), "queued": pending}


async def _app(n: int) -> dict[str, Any]:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from asgi_attribution import AttributionMiddleware, Tracker, track_lead

    from . import apps

    background, (_, discard) = _transports()
    transport = background(discard())
    tracker = Tracker("dub", transport=transport)

    async def signup(request: Request) -> JSONResponse:
        user = request.query_params["u"]
        result = await track_lead(request, "Sign up", customer_external_id=user)
        return JSONResponse({"user": user, "tracked": result.status})

    app = Starlette(
        routes=[Route("/signup", signup, methods=["POST"])],
        middleware=[Middleware(AttributionMiddleware, tracker=tracker)],
    )
    template = apps.scope_for("dub_id among 10 cookies")
    template.update(method="POST", path="/signup", raw_path=b"/signup")
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> Any:
        return body

    statuses: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await tracker.start()
    samples = []
    gc.collect()
    start_rss = rss_bytes()
    for i in range(n):
        await app({**template, "query_string": b"u=user_%d" % i}, receive, send)
        await asyncio.sleep(0)  # the server's loop turn: workers deliver
        if (i + 1) % 10_000 == 0:
            samples.append(round(rss_bytes() / 2**20, 1))
    await tracker.flush()
    gc.collect()
    end_rss = rss_bytes()
    stats = tracker.stats.as_dict()
    await tracker.aclose()
    if statuses.count(200) != n or stats["sent"] != n:
        raise RuntimeError(f"{statuses.count(200)} answered 200, stats {stats}")
    return {
        "requests": n,
        "rss_start_mib": round(start_rss / 2**20, 1),
        "rss_end_mib": round(end_rss / 2**20, 1),
        "rss_every_10k_mib": samples,
        "growth_after_first_10k_mib": round(samples[-1] - samples[0], 1),
    }


def _child(kind: str, n: int) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, "-m", "bench.memory", kind, str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench.memory {kind} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout))


def run(n: int = 100_000) -> dict[str, Any]:
    return {
        "queued_events": n,
        "queued_tracemalloc": _child("queued-tracemalloc", n),
        "queued_rss": _child("queued-rss", n),
        "app_after_requests": _child("app", n),
    }


if __name__ == "__main__":
    kind, count = sys.argv[1], int(sys.argv[2])
    if kind == "app":
        result = asyncio.run(_app(count))
    else:
        result = asyncio.run(_queued(count, kind == "queued-tracemalloc"))
    print(json.dumps(result))
