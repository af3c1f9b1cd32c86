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
from typing import Any

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


# The documented job recipe in a process of its own: sync.track_* on a tracker nobody started,
# then the interpreter exits. By then threading has shut every thread pool down (its exit hooks
# run before atexit's), so a drain at atexit could resolve no host name and write no SQLite row.
JOB = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from asgi_attribution import RetryPolicy, Tracker, sync
url, outbox, count = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
tracker = Tracker("dub", api_key=sys.argv[4], base_url=url, outbox=outbox, shutdown_timeout=15,
                  retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.2),
                  on_drop=lambda d, reason: print("DROPPED", d.event.event_id, flush=True))
for i in range(count):
    result = sync.track_lead(None, tracker=tracker, click_id="c1", event_name="Sign up",
                             customer_external_id=f"job_{i}")
    print("TRACKED", result.event_id, flush=True)
"""


@pytest.mark.parametrize("outbox", ["", "events.sqlite3"])
def test_a_job_process_exits_with_every_event_delivered(
    outbox: str, tmp_path: Any, provider: FakeProvider, url: str
) -> None:
    """Slow answers keep events queued until the exit: the exit drains them (a host name to
    resolve, a SQLite file to write), with no warning and nothing reported."""
    import subprocess
    import sys

    provider.faults = Faults(slow_rate=1.0, slow_seconds=0.3)
    by_name = url.replace("127.0.0.1", "localhost")  # resolved through a thread pool
    where = str(tmp_path / outbox) if outbox else ""
    done = subprocess.run(
        [sys.executable, "-c", JOB, by_name, where, "6", KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    tracked = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("TRACKED")]
    reported = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("DROPPED")]
    delivered = Counter(provider.count_by_idempotency_key())
    assert done.returncode == 0, done.stderr
    assert len(tracked) == 6 and reported == []
    assert sorted(delivered) == sorted(tracked)  # each once, none lost
    assert set(delivered.values()) == {1}
    assert "cannot schedule new futures" not in done.stderr
    assert "at exit failed" not in done.stderr and "WARNING" not in done.stderr, done.stderr
