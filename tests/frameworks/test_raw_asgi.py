"""Raw ASGI: ``AttributionMiddleware(app, tracker)``; ``track_lead(None, ...)`` finds the request"""

from __future__ import annotations

from collections import Counter

import pytest

from asgi_attribution.testing import FakeProvider

from ..support import framework_apps
from .serving import asgi_client, cookie, leads_per_user, served_signups, tracker_for, users

pytestmark = pytest.mark.anyio


async def test_async_and_threaded_sync_code_in_process(provider: FakeProvider, url: str) -> None:
    tracker = tracker_for(url)
    expected = users(3)
    async with asgi_client(framework_apps.raw_app(tracker)) as client:
        assert tracker.loop is not None
        for user, path in expected.items():
            response = await client.post(f"{path}?u={user}", headers=cookie(user))
            assert response.json() == {"status": "queued"}
    assert tracker.loop is None
    assert leads_per_user(provider) == Counter(list(expected))


def test_under_uvicorn_with_sigterm(provider: FakeProvider, url: str) -> None:
    served_signups("raw_app", provider, url)
