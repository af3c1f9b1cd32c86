"""A job's events are never lost silently (issue 26, item 2).

``asyncio.run(job())`` where the job starts the tracker, tracks 200 leads and ends without
``aclose`` (returns, raises, or is cancelled): the loop's end drains the tracker within
``shutdown_timeout`` (delivered, or reported by id through the log and ``on_drop``), and a
second ``asyncio.run`` finds a fresh tracker, not 200 events "moved over" to be lost again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from asgi_attribution import Delivery, RetryPolicy, Tracker
from asgi_attribution.testing import FakeProvider, Faults

from .support.asgi import KEY

LEADS = 200


@pytest.mark.parametrize(
    "ending",
    [
        "returns",
        "raises",
        # A cancelled job's connections die with it (anyio leaves its connect attempts
        # unawaited): its drain reports by id rather than delivers, which the counts allow.
        pytest.param(
            "cancelled",
            marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
        ),
    ],
)
def test_a_job_that_ends_without_aclose_delivers_or_reports_every_event(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    provider.faults = Faults(slow_rate=0.3, slow_seconds=0.02, seed=5)
    dropped: list[str] = []

    def on_drop(delivery: Delivery, reason: str) -> None:
        dropped.append(delivery.event.event_id)

    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        shutdown_timeout=8.0,
        retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.05),
        on_drop=on_drop,
    )
    accepted: list[str] = []

    async def job(run: int) -> None:
        await tracker.start()
        for i in range(LEADS):
            result = await tracker.track_lead(
                click_id=f"clk{run}_{i}", event_name="Sign up", customer_external_id=f"u{run}_{i}"
            )
            assert result.event_id is not None
            accepted.append(result.event_id)
        if ending == "raises":
            raise RuntimeError("the job failed")
        if ending == "cancelled":
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(1)

    for run in (1, 2):
        with contextlib.suppress(RuntimeError, asyncio.CancelledError):
            asyncio.run(job(run))
        assert not tracker.started and tracker.loop is None  # as if never started
    delivered = Counter(provider.count_by_idempotency_key())
    reported = set(dropped)
    lost = set(accepted) - set(delivered) - reported
    print(
        f"{ending}: sent={len(accepted)} delivered={len(set(accepted) & set(delivered))} "
        f"dup={sum(c - 1 for c in delivered.values())} reported={len(reported)} lost={len(lost)}"
    )
    assert len(accepted) == 2 * LEADS
    # Delivered or reported by id (a cancelled job's drain reports rather than delivers today).
    assert lost == set()
    assert all(count == 1 for count in delivered.values())
    assert "moving" not in caplog.text  # the second run did not take over a dead queue
    assert caplog.text.count("is ending without `await tracker.aclose()`") == 2


def test_a_job_whose_provider_is_down_reports_every_event_by_id(
    provider: FakeProvider, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider.faults = Faults(error_rate=1.0)  # every answer a 503: nothing can be delivered
    dropped: list[str] = []
    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        shutdown_timeout=1.0,
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.1),
        on_drop=lambda delivery, reason: dropped.append(delivery.event.event_id),
    )

    async def job() -> list[str]:
        await tracker.start()
        results = [
            await tracker.track_lead(
                click_id=f"clk{i}", event_name="Sign up", customer_external_id=f"u{i}"
            )
            for i in range(20)
        ]
        return [str(result.event_id) for result in results]

    accepted = asyncio.run(job())
    assert sorted(dropped) == sorted(accepted)  # on_drop, by id
    for event_id in accepted:  # and the log, by id
        assert event_id in caplog.text
