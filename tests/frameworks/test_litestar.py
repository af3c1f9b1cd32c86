"""Litestar: ``AttributionPlugin`` adds the middleware and runs the tracker with the app."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from asgi_attribution import MemoryTransport, Tracker
from asgi_attribution.litestar import AttributionPlugin
from asgi_attribution.testing import FakeProvider

from ..support import framework_apps
from .serving import cookie, leads_per_user, served_signups, tracker_for, users


def test_async_and_sync_handlers_with_the_test_client(provider: FakeProvider, url: str) -> None:
    tracker = tracker_for(url)
    expected = users(3)
    with TestClient(app=framework_apps.litestar_app(tracker)) as client:
        assert tracker.loop is not None  # started with the app's lifespan
        for user, path in expected.items():
            response = client.post(f"{path}?u={user}", headers=cookie(user))
            assert response.json() == {"status": "queued"}
    assert tracker.loop is None  # drained after the app's shutdown hooks
    assert leads_per_user(provider) == Counter(list(expected))


def test_under_uvicorn_with_sigterm(provider: FakeProvider, url: str) -> None:
    served_signups("litestar_app", provider, url)


def test_the_plugin_checks_the_middleware_options_at_construction() -> None:
    tracker = Tracker("dub", transport=MemoryTransport())
    with pytest.raises(ValueError, match="attribution_model"):
        AttributionPlugin(tracker=tracker, attribution_model="every-click")
    with pytest.raises(TypeError, match="tracker"):
        AttributionPlugin(tracker="dub")  # type: ignore[arg-type]


def test_lifespan_contexts_and_hooks_may_track_events(provider: FakeProvider, url: str) -> None:
    tracker = tracker_for(url)
    statuses: list[str] = []

    async def track(user: str) -> None:
        result = await tracker.track_lead(
            click_id=f"clk_{user}", event_name="Sign up", customer_external_id=user
        )
        statuses.append(result.status)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await track("context_enter")
        yield
        await track("context_exit")

    async def on_startup() -> None:
        await track("startup_hook")

    async def on_shutdown() -> None:
        await track("shutdown_hook")

    app = Litestar(
        [],
        plugins=[AttributionPlugin(tracker=tracker)],
        lifespan=[lifespan],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        logging_config=None,
    )
    with TestClient(app=app):
        pass
    # The tracker started before the first context and drained after the last hook: all queued.
    assert statuses == ["queued"] * 4
    assert leads_per_user(provider) == Counter(
        ["context_enter", "startup_hook", "context_exit", "shutdown_hook"]
    )
