"""One event loop owns delivery: the tracker's. Other loops and threads hand events to it.

A real uvicorn server (in a thread, on a real socket) runs an app whose ``def`` endpoint calls
``asyncio.run(track_lead(...))``, while another thread calls ``asyncio.run(tracker.send(...))``.
Every event is delivered once, reported once, and the counters add up. Transports are used on
the owner loop alone: a direct call from another loop while it runs is refused.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_attribution import (
    DUB,
    AttributionMiddleware,
    BackgroundTransport,
    Delivery,
    LeadEvent,
    RetryPolicy,
    Tracker,
    TrackResult,
    track_lead,
)
from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread
from tests.support.asgi import KEY

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_elapsed=30)


def balanced(transport: BackgroundTransport) -> bool:
    s = transport.stats
    return s.queued == s.sent + s.failed + s.dropped + transport.pending


def test_sync_endpoints_and_threads_hand_events_to_the_owner_loop(
    provider: FakeProvider, url: str, caplog: Any
) -> None:
    provider.faults = Faults(slow_rate=0.3, slow_seconds=0.02, error_rate=0.2, seed=11)
    tracker = Tracker("dub", api_key=KEY, base_url=url, retry=FAST)
    transport = tracker.transport
    assert isinstance(transport, BackgroundTransport)
    statuses: list[str] = []

    def signup(request: Request) -> JSONResponse:  # a `def` endpoint: runs in a worker thread
        async def go() -> TrackResult:
            user = request.query_params["u"]
            return await track_lead(request, "Sign up", customer_external_id=user)

        result = asyncio.run(go())
        return JSONResponse({"status": result.status, "event_id": result.event_id})

    app = AttributionMiddleware(
        Starlette(routes=[Route("/signup", signup, methods=["POST"])]), tracker
    )

    def job(i: int) -> None:  # a job thread with its own event loop
        event = LeadEvent(click_id=f"clk{i}", event_name="Sign up", customer_external_id=f"u{i}")
        statuses.append(asyncio.run(tracker.send(event)).status)

    with serve_in_thread(app) as app_url:
        owner = transport.loop
        assert owner is not None and owner.is_running()
        threads = [threading.Thread(target=job, args=(i,)) for i in range(5, 10)]
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=app_url, timeout=30) as client:
            for i in range(5):
                answer = client.post(f"/signup?u=u{i}", headers={"cookie": f"dub_id=clk{i}"})
                statuses.append(answer.json()["status"])
        for thread in threads:
            thread.join(timeout=30)
        assert transport.loop is owner  # nobody moved the queue
    # The server's lifespan shutdown drained the queue.
    delivered = {lead["customerExternalId"] for lead in provider.leads()}
    lost = {f"u{i}" for i in range(10)} - delivered
    stats = transport.stats
    assert statuses == ["queued"] * 10
    assert (len(delivered), lost) == (10, set())
    assert sorted(provider.count_by_idempotency_key().values()) == [1] * 10  # each POSTed once
    assert (stats.queued, stats.sent, stats.failed, stats.dropped) == (10, 10, 0, 0)
    assert balanced(transport) and transport.pending == 0
    assert "Event loop is closed" not in caplog.text
    assert "moving" not in caplog.text  # no take-over while the owner ran
    assert transport.loop is None


@pytest.mark.anyio
async def test_an_owner_that_does_not_take_the_event_leads_to_an_inline_send(
    provider: FakeProvider, url: str
) -> None:
    """The owner loop runs but is blocked: after handoff_timeout the caller sends inline."""
    from asgi_attribution import HTTPTransport

    transport = BackgroundTransport(HTTPTransport(KEY, base_url=url, retry=FAST))
    tracker = Tracker("dub", transport=transport, handoff_timeout=0.2)
    ready, release = threading.Event(), threading.Event()

    def owner_thread() -> None:
        async def owner() -> None:
            await tracker.start()
            ready.set()
            await asyncio.to_thread(release.wait)  # keeps the loop running, but ...
            await tracker.aclose()

        asyncio.run(owner())

    thread = threading.Thread(target=owner_thread)
    thread.start()
    assert ready.wait(10)
    owner = transport.loop
    assert owner is not None
    blocked = threading.Event()
    owner.call_soon_threadsafe(lambda: blocked.wait(5))  # ... blocks it for a while
    event = LeadEvent(click_id="clk1", event_name="Sign up", customer_external_id="u1")
    result = await tracker.send(event)
    blocked.set()
    release.set()
    thread.join(timeout=30)
    assert result.status == "sent"
    assert provider.count_by_idempotency_key() == {result.event_id: 1}
    stats = transport.stats
    assert (stats.queued, stats.sent, stats.failed) == (0, 1, 0)


def run_owner(tracker: Tracker) -> tuple[threading.Thread, asyncio.AbstractEventLoop]:
    """Start ``tracker`` on a loop of its own thread, kept running until the loop is stopped."""
    started: list[asyncio.AbstractEventLoop] = []
    ready = threading.Event()

    def owner_thread() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(tracker.start())
        started.append(loop)
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=owner_thread)
    thread.start()
    assert ready.wait(10)
    return thread, started[0]


def test_flush_and_aclose_from_another_thread_run_on_the_owner(
    provider: FakeProvider, url: str
) -> None:
    tracker = Tracker("dub", api_key=KEY, base_url=url, retry=FAST)
    thread, owner = run_owner(tracker)
    try:

        async def elsewhere() -> None:
            for i in range(5):
                event = LeadEvent(
                    click_id=f"c{i}", event_name="Sign up", customer_external_id=f"u{i}"
                )
                assert (await tracker.send(event)).status == "queued"  # the owner's queue
            await tracker.flush(10)
            assert len(provider.leads()) == 5
            await tracker.aclose()  # runs on the owner: its loop's tasks and connections

        asyncio.run(elsewhere())
        assert tracker.loop is None and tracker.transport.loop is None  # type: ignore[attr-defined]
    finally:
        owner.call_soon_threadsafe(owner.stop)
        thread.join(10)
    stats = tracker.stats
    assert (stats.queued, stats.sent, stats.failed, stats.dropped) == (5, 5, 0, 0)


def test_a_queue_called_directly_from_another_loop_while_its_owner_runs_is_refused(
    url: str,
) -> None:
    from asgi_attribution import HTTPTransport

    transport = BackgroundTransport(HTTPTransport(KEY, base_url=url, retry=FAST))
    tracker = Tracker("dub", transport=transport)
    thread, owner = run_owner(tracker)
    try:
        event = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        with pytest.raises(RuntimeError, match="through a Tracker"):
            asyncio.run(transport.send(Delivery(event, DUB)))
        assert transport.loop is owner  # nobody took the queue over
    finally:
        asyncio.run_coroutine_threadsafe(tracker.aclose(), owner).result(10)
        owner.call_soon_threadsafe(owner.stop)
        thread.join(10)
