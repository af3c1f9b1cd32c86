"""FastAPI: ``add_middleware``, ``Depends(get_attribution)``, ``async def`` and ``def`` routes."""

from __future__ import annotations

import warnings
from collections import Counter

from starlette.exceptions import StarletteDeprecationWarning

from asgi_attribution.testing import FakeProvider

from ..support import framework_apps
from .serving import cookie, leads_per_user, served_signups, tracker_for

with warnings.catch_warnings():
    # Starlette >= 1.1 warns at import that its test client would rather run on httpx2; the
    # test client works with httpx, which the package depends on.
    warnings.filterwarnings(
        "ignore", "Using `httpx` with `starlette.testclient`", StarletteDeprecationWarning
    )
    from fastapi.testclient import TestClient


def test_async_and_def_endpoints_with_the_test_client(provider: FakeProvider, url: str) -> None:
    tracker = tracker_for(url)
    with TestClient(framework_apps.fastapi_app(tracker)) as client:
        response = client.post("/signup?u=ada", headers=cookie("ada"))
        assert response.json() == {"status": "queued", "click_id": "clk_ada"}
        response = client.post("/signup-sync?u=bob", headers=cookie("bob"))
        assert response.json() == {"status": "queued"}  # handed to the tracker's loop
    assert leads_per_user(provider) == Counter(["ada", "bob"])


def test_without_with_nobody_owns_the_tracker_and_each_lead_is_sent_inline(
    provider: FakeProvider, url: str
) -> None:
    tracker = tracker_for(url)
    client = TestClient(framework_apps.fastapi_app(tracker))  # no lifespan: nobody starts it
    assert client.post("/signup?u=ada", headers=cookie("ada")).json()["status"] == "sent"
    assert client.post("/signup-sync?u=bob", headers=cookie("bob")).json()["status"] == "sent"
    assert tracker.loop is None
    assert leads_per_user(provider) == Counter(["ada", "bob"])


def test_under_uvicorn_with_sigterm(provider: FakeProvider, url: str) -> None:
    served_signups("fastapi_app", provider, url)
