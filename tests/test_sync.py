"""``asgi_attribution.sync``: tracking from sync code, against the fake provider over a socket.

A tracker nobody started delivers inline (a job, a script); a started tracker whose loop runs on
another thread gets the event handed over (same queue); from a thread that runs a loop, the sync
API refuses and names the async one.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_attribution import (
    AttributionMiddleware,
    DeliveryError,
    InvalidEventError,
    RetryPolicy,
    Tracker,
    sync,
)
from asgi_attribution.testing import FakeProvider, Faults

from .support.asgi import KEY, client_for


def tracker_for(url: str) -> Tracker:
    return Tracker(
        "dub", api_key=KEY, base_url=url, retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    )


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running on its own thread, as a server's is while a sync view runs."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def on(loop: asyncio.AbstractEventLoop, coroutine: object) -> object:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)  # type: ignore[arg-type]


def test_a_job_without_an_owner_delivers_inline_through_a_503(
    provider: FakeProvider, url: str
) -> None:
    provider.faults = Faults(fail_first=1)
    tracker = tracker_for(url)
    lead = sync.track_lead(
        None, "Sign up", tracker=tracker, click_id="clk_1", customer_external_id="user_1"
    )
    sale = sync.track_sale(None, tracker=tracker, customer_external_id="user_1", amount=4900)
    assert (lead.status, sale.status) == ("sent", "sent")
    assert [lead["customerExternalId"] for lead in provider.leads()] == ["user_1"]
    assert [sale["amount"] for sale in provider.sales()] == [4900]
    assert tracker.loop is None  # nothing left behind: no loop, no queue


def test_a_customer_update_from_a_job(provider: FakeProvider, url: str) -> None:
    tracker = tracker_for(url)
    sync.track_lead(None, "Sign up", tracker=tracker, click_id="c1", customer_external_id="u1")
    result = sync.track_customer(None, tracker=tracker, customer_id="u1", customer_name="Ada")
    assert result.status == "sent"


def test_threads_hand_their_events_to_the_owning_loop(
    provider: FakeProvider, url: str, loop_thread: asyncio.AbstractEventLoop
) -> None:
    tracker = tracker_for(url)
    on(loop_thread, tracker.start())
    assert tracker.loop is loop_thread

    def signup(i: int) -> str:
        result = sync.track_lead(
            None, "Sign up", tracker=tracker, click_id=f"clk_{i}", customer_external_id=f"u{i}"
        )
        return result.status

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(signup, range(40)))
    assert statuses == ["queued"] * 40  # the owner's queue, not 40 loops of their own
    on(loop_thread, tracker.aclose())
    assert Counter(lead["customerExternalId"] for lead in provider.leads()) == Counter(
        f"u{i}" for i in range(40)
    )
    stats = tracker.stats
    assert (stats.queued, stats.sent, stats.failed, stats.dropped) == (40, 40, 0, 0)


def test_a_blocked_owner_loop_is_a_bounded_wait(
    url: str, loop_thread: asyncio.AbstractEventLoop
) -> None:
    tracker = tracker_for(url)
    on(loop_thread, tracker.start())
    release = threading.Event()
    loop_thread.call_soon_threadsafe(release.wait, 5)  # the loop is stuck in blocking code
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        sync.track_lead(
            None, "Sign up", tracker=tracker, click_id="c", customer_external_id="u", timeout=0.2
        )
    assert caught.value.code == "handoff_timeout"
    assert time.monotonic() - started < 2
    release.set()
    on(loop_thread, tracker.aclose())


def test_invalid_fields_raise_in_the_calling_thread(
    url: str, loop_thread: asyncio.AbstractEventLoop
) -> None:
    tracker = tracker_for(url)
    on(loop_thread, tracker.start())
    with pytest.raises(InvalidEventError, match="event_quantity"):
        sync.track_lead(
            None,
            "Sign up",
            tracker=tracker,
            click_id="c",
            customer_external_id="u",
            event_quantity=0,
        )
    on(loop_thread, tracker.aclose())


def test_a_tracker_left_started_on_an_ended_loop_is_closed_and_sends_inline(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_for(url)
    asyncio.run(tracker.start())  # started, never closed: its loop is gone
    for user in ("u1", "u2"):
        result = sync.track_lead(
            None, "Sign up", tracker=tracker, click_id="c1", customer_external_id=user
        )
        assert result.status == "sent"
    assert [lead["customerExternalId"] for lead in provider.leads()] == ["u1", "u2"]
    assert tracker.loop is None  # closed in the loop that delivered: no connection left behind
    # The loop's end closed it (nothing was pending); the calls found a fresh tracker.
    assert caplog.text.count("is ending without `await tracker.aclose()`") == 1


@pytest.mark.anyio
async def test_inside_a_running_loop_it_points_to_the_async_api(url: str) -> None:
    tracker = tracker_for(url)
    with pytest.raises(RuntimeError, match=r"await asgi_attribution\.track_lead"):
        sync.track_lead(None, "Sign up", tracker=tracker, click_id="c", customer_external_id="u")
    with pytest.raises(RuntimeError, match=r"await asgi_attribution\.track_sale"):
        sync.track_sale(None, tracker=tracker, customer_external_id="u", amount=100)


def test_without_a_request_or_a_tracker_it_says_what_to_pass() -> None:
    with pytest.raises(RuntimeError, match="tracker="):
        sync.track_lead(None, "Sign up", customer_external_id="u")


def test_a_request_the_middleware_never_saw_names_the_middleware() -> None:
    with pytest.raises(RuntimeError, match="AttributionMiddleware"):
        sync.track_lead(Request({"type": "http"}), "Sign up", customer_external_id="u")


def test_a_request_without_an_asgi_scope_says_so() -> None:
    class WSGIRequest:
        method = "POST"

        def __init__(self) -> None:
            self.environ: dict[str, str] = {}

    with pytest.raises(TypeError, match=r"a WSGI environ .* got .*WSGIRequest$"):
        sync.track_lead(WSGIRequest(), "Sign up", customer_external_id="u")  # type: ignore[arg-type]


def test_a_raw_asgi_scope_is_a_request(provider: FakeProvider, url: str) -> None:
    """A raw ASGI app hands its scope to a thread; the lead has the scope's click."""
    tracker = tracker_for(url)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        result = await asyncio.to_thread(
            sync.track_lead, scope, "Sign up", customer_external_id="ada"
        )
        await JSONResponse({"status": result.status})(scope, receive, send)

    async def main() -> str:
        async with client_for(AttributionMiddleware(app, tracker)) as client:
            response = await client.post("/signup", headers={"cookie": "dub_id=clk_ada"})
        return str(response.json()["status"])

    assert asyncio.run(main()) == "queued"
    assert [lead["clickId"] for lead in provider.leads()] == ["clk_ada"]


@pytest.mark.anyio
async def test_a_threadpool_endpoint_finds_the_request_being_handled(
    provider: FakeProvider, url: str
) -> None:
    def signup(request: Request) -> Response:
        # request=None: the request being handled, from the context the threadpool copied.
        result = sync.track_lead(None, "Sign up", customer_external_id=request.query_params["u"])
        return JSONResponse({"status": result.status, "thread": threading.get_ident()})

    tracker = tracker_for(url)
    app = Starlette(routes=[Route("/signup", signup, methods=["POST"])])
    app.add_middleware(AttributionMiddleware, tracker=tracker)
    async with client_for(app) as client:
        response = await client.post("/signup?u=ada", headers={"cookie": "dub_id=clk_ada"})
        assert response.json()["status"] == "queued"
        assert response.json()["thread"] != threading.get_ident()
    assert [lead["clickId"] for lead in provider.leads()] == ["clk_ada"]


def test_importing_the_package_and_sync_loads_no_optional_library() -> None:
    optional = ["django", "litestar", "opentelemetry", "quart"]
    code = (
        "import sys, asgi_attribution, asgi_attribution.sync; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({optional!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("event_id", ["evt\r\nX-Injected: 1", "", "x" * 101, "a b", "evt\x00"])
def test_a_bad_event_id_is_refused_at_the_call(url: str, event_id: str) -> None:
    tracker = tracker_for(url)
    with pytest.raises(InvalidEventError, match="event_id"):
        sync.track_lead(
            None,
            "Sign up",
            tracker=tracker,
            click_id="c",
            customer_external_id="u",
            event_id=event_id,
        )
