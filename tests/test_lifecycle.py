"""No silent loss in any deployment shape: real uvicorn processes, real signals, real sockets.

Each case serves an app under uvicorn in its own process, sends signups through a real socket,
stops the server with SIGTERM and counts at the fake provider what was sent, delivered and
lost. The only acceptable count of lost is zero.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from asgi_attribution import RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider, Faults

from .support.asgi import KEY
from .support.uvicorn import Uvicorn

pytestmark = pytest.mark.anyio


def signups(url: str, count: int) -> list[str]:
    with httpx.Client(base_url=url, timeout=30) as client:
        return [
            client.post(f"/signup?u=user_{i}", headers={"cookie": f"dub_id=clk{i}"}).json()[
                "status"
            ]
            for i in range(count)
        ]


@pytest.mark.parametrize(
    ("target", "args", "status"),
    [
        ("tests.support.lifecycle_apps:django_like", (), "queued"),
        ("tests.support.lifecycle_apps:plain", ("--lifespan", "off"), "sent"),
        ("tests.support.lifecycle_apps:mounted", (), "sent"),
    ],
    ids=["django-rejects-lifespan", "lifespan-off", "mounted-sub-app"],
)
def test_every_lead_is_delivered_whatever_passes_lifespan(
    provider: FakeProvider, url: str, target: str, args: tuple[str, ...], status: str
) -> None:
    # Slow answers so that queued events are still waiting when SIGTERM arrives.
    provider.faults = Faults(slow_rate=0.5, slow_seconds=0.05, error_rate=0.1, seed=3)
    with Uvicorn(target, url, *args) as server:
        statuses = signups(server.url, 40)
        server.stop()
    # uvicorn re-raises SIGTERM once it has shut down cleanly (or exits 0, by version).
    assert server.process.returncode in (0, -signal.SIGTERM), server.log
    delivered = {lead["customerExternalId"] for lead in provider.leads()}
    lost = {f"user_{i}" for i in range(40)} - delivered
    assert statuses == [status] * 40
    assert lost == set()
    if status == "sent":
        assert "is not started" in server.log


def test_jobs_in_asyncio_run_without_async_with_lose_nothing(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker(
        "dub", api_key=KEY, base_url=url, retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    )
    provider.faults = Faults(fail_first=1)

    async def job(i: int) -> str:
        result = await tracker.track_lead(
            click_id=f"clk{i}", event_name="Sign up", customer_external_id=f"user_{i}"
        )
        return result.status

    statuses = [asyncio.run(job(i)) for i in range(2)]
    assert statuses == ["sent", "sent"]
    assert sorted(s["customerExternalId"] for s in provider.leads()) == ["user_0", "user_1"]
    assert caplog.text.count("is not started") == 1  # said once, with the fix
    assert "async with tracker" in caplog.text


async def test_async_with_tracker_queues_and_drains(provider: FakeProvider, url: str) -> None:
    tracker = Tracker("dub", api_key=KEY, base_url=url)
    async with tracker:
        result = await tracker.track_lead(
            click_id="clk1", event_name="Sign up", customer_external_id="u1"
        )
        assert result.status == "queued"
    assert [lead["customerExternalId"] for lead in provider.leads()] == ["u1"]


async def test_inline_send_is_bounded_by_inline_timeout(provider: FakeProvider, url: str) -> None:
    from asgi_attribution import DeliveryError

    provider.faults = Faults(error_rate=1.0)  # every answer a 503: retried until the budget ends
    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        background=False,
        inline_timeout=0.5,
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.1),
    )
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await tracker.track_lead(click_id="clk1", event_name="Sign up", customer_external_id="u1")
    assert caught.value.code == "inline_timeout"
    assert caught.value.event_id in str(caught.value)
    assert time.monotonic() - started < 5  # bounded (generous: this is not a speed test)


@pytest.mark.parametrize("base_url", ["api.dub.co", "ftp://api.dub.co", "https://", ""])
def test_base_url_is_checked_at_construction(base_url: str) -> None:
    if base_url == "":
        Tracker("dub", base_url=base_url)  # empty means the provider's default
        return
    with pytest.raises(ValueError, match="base_url"):
        Tracker("dub", base_url=base_url)
