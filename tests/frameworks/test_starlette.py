"""Starlette: ``Middleware(AttributionMiddleware, tracker=...)``; async and sync endpoints."""

from __future__ import annotations

import warnings
from collections import Counter

from starlette.exceptions import StarletteDeprecationWarning

from asgi_attribution.testing import FakeProvider

from ..support import framework_apps
from .serving import cookie, leads_per_user, served_signups, tracker_for, users

with warnings.catch_warnings():
    # Starlette >= 1.1 warns at import that its test client would rather run on httpx2; the
    # test client works with httpx, which the package depends on.
    warnings.filterwarnings(
        "ignore", "Using `httpx` with `starlette.testclient`", StarletteDeprecationWarning
    )
    from starlette.testclient import TestClient


def test_async_and_sync_endpoints_with_the_test_client(provider: FakeProvider, url: str) -> None:
    tracker = tracker_for(url)
    expected = users(3)
    with TestClient(framework_apps.starlette_app(tracker)) as client:
        assert tracker.loop is not None
        for user, path in expected.items():
            response = client.post(f"{path}?u={user}", headers=cookie(user))
            assert response.json() == {"status": "queued"}
    assert tracker.loop is None
    assert leads_per_user(provider) == Counter(list(expected))


def test_under_uvicorn_with_sigterm(provider: FakeProvider, url: str) -> None:
    served_signups("starlette_app", provider, url)
