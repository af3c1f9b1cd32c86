"""Serving a framework's app for real: uvicorn in its own process, signups over a socket, SIGTERM.

Helpers only (pytest collects ``test_*.py``); the apps are in ``tests/support/framework_apps``.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from asgi_attribution import RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider, Faults

from ..support.asgi import KEY
from ..support.uvicorn import Uvicorn

APPS = "tests.support.framework_apps"


def users(count: int) -> dict[str, str]:
    """``count`` users for each handler: ``{user id: path}``, async and sync alternating."""
    return {
        f"user_{i}_{kind}": f"/signup{suffix}"
        for i in range(count)
        for kind, suffix in (("async", ""), ("sync", "-sync"))
    }


def cookie(user: str) -> dict[str, str]:
    return {"cookie": f"dub_id=clk_{user}"}


def leads_per_user(provider: FakeProvider) -> Counter[str]:
    return Counter(lead["customerExternalId"] for lead in provider.leads())


def served_signups(factory: str, provider: FakeProvider, fake_url: str, count: int = 5) -> None:
    """Signups through a real uvicorn, then SIGTERM: every user has exactly one lead."""
    # Slow and failing answers, so that queued events are still waiting when SIGTERM arrives.
    provider.faults = Faults(slow_rate=0.5, slow_seconds=0.3, error_rate=0.2, seed=5)
    expected = users(count)
    with Uvicorn(f"{APPS}:{factory}", fake_url, "--factory") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            statuses = {
                user: client.post(f"{path}?u={user}", headers=cookie(user)).json()["status"]
                for user, path in expected.items()
            }
        server.stop()
    # uvicorn re-raises SIGTERM once it has shut down cleanly (or exits 0, by version).
    assert server.process.returncode in (0, -signal.SIGTERM), server.log
    assert statuses == dict.fromkeys(expected, "queued"), server.log
    assert leads_per_user(provider) == Counter(list(expected)), server.log
    assert "not delivered" not in server.log and "Traceback" not in server.log, server.log


def tracker_for(fake_url: str) -> Tracker:
    """A tracker for the fake provider, with quick retries (as the served apps have)."""
    return Tracker(
        "dub",
        api_key=KEY,
        base_url=fake_url,
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.1),
    )


@asynccontextmanager
async def asgi_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """httpx in-process, inside the app's lifespan (for apps without a test client of their own
    that runs ASGI middleware: raw ASGI, and Django, whose ``Client`` calls its handler)."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
