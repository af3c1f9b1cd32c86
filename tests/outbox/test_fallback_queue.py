"""The outbox's memory fallback is a queue like any other: the tracker's ``queue_size``,
``queue_full_timeout``, ``on_drop``, ``on_error`` and ``on_delivered`` apply to it.

During a real store outage (a killed redis-server; a SQLite file whose inserts a trigger
refuses, as a full disk or a damaged page would) events go to the in-memory queue, and every
one of them is delivered (``on_delivered``), dropped with its id (``on_drop`` and a log line)
or failed with its id (``on_error`` and a log line). Each case counts sent, delivered,
delivered twice, reported and silently lost (always 0) in the fake provider's ledger.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import RetryPolicy, Tracker, TrackResult
from asgi_attribution.testing import FakeProvider, Faults
from asgi_attribution.transports import Delivery, OutboxTransport

from .conftest import DURABLE
from .servers import RedisServer

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=1, max_elapsed=60)
KEY = "dub_test_key"


class Callbacks:
    """The tracker's three callbacks, recording the event ids they were called with."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.dropped: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def on_delivered(self, delivery: Delivery, result: TrackResult) -> None:
        self.delivered.append(delivery.event.event_id)

    async def on_drop(self, delivery: Delivery, reason: str) -> None:  # async ones work too
        self.dropped[delivery.event.event_id] = reason

    def on_error(self, delivery: Delivery, exc: Exception) -> None:
        self.failed[delivery.event.event_id] = str(exc)

    def options(self) -> dict[str, Any]:
        return {
            "on_delivered": self.on_delivered,
            "on_drop": self.on_drop,
            "on_error": self.on_error,
        }


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def signup(tracker: Tracker, user: str) -> Any:
    return tracker.track_lead(
        click_id=f"clk_{user}", event_name="Sign up", customer_external_id=user
    )


def count(
    scenario: str,
    provider: FakeProvider,
    results: list[TrackResult],
    reported: set[str],
) -> tuple[int, int, int, int, list[str]]:
    """sent, delivered, duplicates, reported, silently lost; printed as a scenario-table row."""
    ledger = provider.count_by_idempotency_key()
    sent = [r.event_id for r in results]
    delivered = [eid for eid in sent if ledger.get(eid, 0) >= 1]
    dup = sum(max(0, ledger.get(eid, 0) - 1) for eid in sent)
    lost = [eid for eid in sent if eid not in ledger and eid not in reported]
    print(
        f"| {scenario} | {len(sent)} | {len(delivered)} | {dup} | {len(reported)} | {len(lost)} |"
    )
    return len(sent), len(delivered), dup, len(reported & set(sent)), lost


def refuse_inserts(path: Path) -> Callable[[], None]:
    """A trigger refuses every insert into the outbox file; the returned call lifts it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )

    def lift() -> None:
        conn.execute("DROP TRIGGER refuse")
        conn.close()

    return lift


def test_the_queue_options_and_callbacks_are_accepted_with_an_outbox(tmp_path: Path) -> None:
    calls = Callbacks()
    tracker = Tracker(
        "dub",
        api_key=KEY,
        outbox=tmp_path / "events.db",
        queue_size=7,
        queue_full_timeout=0.5,
        **calls.options(),
    )
    transport = tracker.transport
    assert isinstance(transport, OutboxTransport) and transport.fallback is not None
    queue = transport.fallback.queue  # the fallback IS the background queue, so configured
    assert (queue.queue_size, queue.queue_full_timeout) == (7, 0.5)
    assert (queue.on_drop, queue.on_error, queue.on_delivered) == (
        calls.on_drop,
        calls.on_error,
        calls.on_delivered,
    )
    with pytest.raises(TypeError, match=r"outbox_fallback=None\) ignores on_drop=: there is no"):
        Tracker("dub", outbox=tmp_path / "b.db", outbox_fallback=None, on_drop=calls.on_drop)
    with pytest.raises(TypeError, match=r"outbox_fallback=None\) ignores queue_full_timeout="):
        Tracker("dub", outbox=tmp_path / "c.db", outbox_fallback=None, queue_full_timeout=1.0)
    # on_error and on_delivered still apply: to the events delivered from the store.
    Tracker("dub", outbox=tmp_path / "d.db", outbox_fallback=None, on_error=calls.on_error)


async def test_redis_killed_events_delivered_from_memory_reach_on_delivered(
    redis_server: Callable[..., RedisServer], provider: FakeProvider, url: str
) -> None:
    server = redis_server(*DURABLE)
    calls = Callbacks()
    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        outbox=server.url,
        append_timeout=0.5,
        shutdown_timeout=2,
        retry=FAST,
        **calls.options(),
    )
    async with tracker:
        stored = [await signup(tracker, f"s{i}") for i in range(3)]
        await tracker.flush(timeout=20)
        server.kill()
        in_memory = [await signup(tracker, f"m{i}") for i in range(10)]
        await wait_for(
            lambda: all(r.event_id in calls.delivered for r in in_memory), "on_delivered"
        )
    assert all(r.durable for r in stored)
    assert all(r.status == "queued" and not r.durable for r in in_memory)
    tally = count("redis killed: 3 stored, 10 to memory", provider, stored + in_memory, set())
    assert tally == (13, 13, 0, 0, [])
    # Each delivered event reached on_delivered once, those from memory included.
    assert sorted(calls.delivered) == sorted(r.event_id for r in stored + in_memory)
    assert calls.dropped == {} and calls.failed == {}


async def test_a_full_fallback_queue_drops_past_queue_full_timeout_naming_each_event(
    tmp_path: Path, provider: FakeProvider, url: str, caplog: Any
) -> None:
    path = tmp_path / "events.db"
    calls = Callbacks()
    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        outbox=path,
        retry=FAST,
        concurrency=1,
        queue_size=2,
        queue_full_timeout=0.2,
        **calls.options(),
    )
    async with tracker:
        first = await signup(tracker, "first")  # opens the file and its table
        await tracker.flush(timeout=20)
        lift = refuse_inserts(path)
        # The provider answers slowly: one attempt at a time holds the queue's only worker.
        provider.faults = Faults(slow_rate=1.0, slow_seconds=1.5)
        burst = await asyncio.gather(*(signup(tracker, f"b{i}") for i in range(8)))
        provider.faults = Faults()
        lift()
        await tracker.flush(timeout=30)
    dropped = {r.event_id for r in burst if r.status == "dropped"}
    assert first.durable and all(not r.durable for r in burst)
    assert dropped, "a queue of 2 with one slow worker must drop some of 8 events"
    # Each drop was reported by id: the caller's result, on_drop, and a WARNING line.
    assert set(calls.dropped) == dropped
    assert all("queue full (2 events) for 0.2s" in why for why in calls.dropped.values())
    assert all(f"event {eid} dropped" in caplog.text for eid in dropped)
    sent, delivered, dup, reported, lost = count(
        "SQLite refusing inserts, memory queue of 2 full", provider, [first, *burst], dropped
    )
    assert (sent, dup, lost) == (9, 0, [])
    assert delivered + reported == sent
    assert sorted(calls.delivered) == sorted(
        r.event_id for r in [first, *burst] if r.event_id not in dropped
    )


async def test_a_final_failure_from_the_fallback_reaches_on_error(
    redis_server: Callable[..., RedisServer], provider: FakeProvider, url: str, caplog: Any
) -> None:
    server = redis_server(*DURABLE)
    calls = Callbacks()
    tracker = Tracker(
        "dub",
        api_key=KEY,
        base_url=url,
        outbox=server.url,
        append_timeout=0.5,
        shutdown_timeout=2,
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02),
        **calls.options(),
    )
    async with tracker:
        await tracker.start()
        server.kill()
        provider.faults = Faults(error_rate=1.0)  # every answer a 503: each event fails
        results = [await signup(tracker, f"f{i}") for i in range(4)]
        await wait_for(lambda: len(calls.failed) == 4, "on_error for each event")
        provider.faults = Faults()
    failed = set(calls.failed)
    assert failed == {r.event_id for r in results}
    assert all("503" in why for why in calls.failed.values())
    assert all(f"event {eid} failed" in caplog.text for eid in failed)
    sent, delivered, dup, reported, lost = count(
        "redis killed, provider 503s: final failures", provider, results, failed
    )
    assert (sent, delivered, dup, reported, lost) == (4, 0, 0, 4, [])
    assert calls.delivered == [] and calls.dropped == {}
