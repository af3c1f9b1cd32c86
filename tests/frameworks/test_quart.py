"""Quart: ``app.asgi_app = AttributionMiddleware(app.asgi_app, tracker)``; Quart passes lifespan."""

from __future__ import annotations

from collections import Counter

import pytest

from asgi_attribution.testing import FakeProvider

from ..support import framework_apps
from .serving import cookie, leads_per_user, served_signups, tracker_for, users

pytestmark = pytest.mark.anyio


async def test_async_and_sync_views_with_the_test_client(provider: FakeProvider, url: str) -> None:
    tracker = tracker_for(url)
    expected = users(3)
    app = framework_apps.quart_app(tracker)
    async with app.test_app() as test_app:  # runs the lifespan, through the middleware
        assert tracker.loop is not None
        client = test_app.test_client()
        for user, path in expected.items():
            response = await client.post(f"{path}?u={user}", headers=cookie(user))
            assert await response.get_json() == {"status": "queued"}
    assert tracker.loop is None
    assert leads_per_user(provider) == Counter(list(expected))


def test_under_uvicorn_with_sigterm(provider: FakeProvider, url: str) -> None:
    served_signups("quart_app", provider, url)
