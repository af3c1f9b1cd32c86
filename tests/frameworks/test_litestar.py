"""Litestar: ``AttributionPlugin`` adds the middleware and runs the tracker with the app."""

from __future__ import annotations

from collections import Counter

import pytest
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
