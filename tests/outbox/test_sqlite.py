"""The SQLite outbox: durable appends, delivery with retries and dead letters, leases shared by
processes, and real processes killed with SIGKILL mid-delivery.

The provider is the package's FakeProvider served by uvicorn on 127.0.0.1 (real sockets).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import (
    Delivery,
    OutboxError,
    OutboxTransport,
    RetryPolicy,
    SQLiteOutbox,
    Tracker,
)
from asgi_attribution.testing import FakeProvider, Faults
from tests.support.asgi import KEY
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio
WORKER = Path(__file__).parents[1] / "support" / "outbox_worker_app.py"
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=2, max_elapsed=30)
LEAD = {"click_id": "clk", "event_name": "Sign up"}


def rows(path: Path) -> list[dict[str, Any]]:
    """Every row of the outbox, read with a separate plain sqlite3 connection."""
    conn = sqlite3.connect(path)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]
    finally:
        conn.close()


def states(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows(path):
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


# -- in one process -------------------------------------------------------------------------


async def test_events_are_stored_before_track_returns_then_delivered(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    provider.faults = Faults(
        error_rate=0.2, rate_limit_rate=0.1, retry_after_seconds=0.05, drop_rate=0.05, seed=4
    )
    path = tmp_path / "events.db"
    tracker = Tracker("dub", api_key=KEY, base_url=url, outbox=path, retry=FAST)
    assert not path.exists()  # nothing is created before start
    async with tracker:
        results = [
            await tracker.track_lead(**LEAD, customer_external_id=f"u{i}") for i in range(60)
        ]
        assert all(r.status == "queued" and r.durable and r.accepted for r in results)
        stored = {row["event_id"] for row in rows(path)}
        assert stored == {r.event_id for r in results}  # on disk before delivery finished
        await tracker.flush(timeout=30)
    assert {lead["customerExternalId"] for lead in provider.leads()} == {f"u{i}" for i in range(60)}
    assert set(provider.count_by_idempotency_key()) == {r.event_id for r in results}
    assert states(path) == {"delivered": 60}
    stats = tracker.stats.as_dict()
    assert stats["queued"] == 60 and stats["sent"] == 60 and stats["retried"] > 0
    stored_row = rows(path)[0]
    assert KEY not in json.dumps(stored_row)  # the API key is never stored
    assert json.loads(stored_row["event"])["customer_external_id"] == "u0"


async def test_a_401_pauses_delivery_and_holds_the_events(
    provider: FakeProvider, url: str, tmp_path: Path, caplog: Any
) -> None:
    """A revoked key fails every event alike: the outbox pauses, nothing becomes a dead letter."""
    failures: list[tuple[str, Exception]] = []
    path = tmp_path / "events.db"
    tracker = Tracker(
        "dub",
        api_key="wrong",
        base_url=url,
        outbox=path,
        retry=FAST,
        on_error=lambda d, exc: failures.append((d.event.event_id, exc)),
    )
    async with tracker:
        await tracker.track_lead(**LEAD, customer_external_id="u1")
        await tracker.flush(timeout=10)  # returns once paused: the events are safe
    [row] = rows(path)
    assert row["state"] == "pending" and row["attempts"] == 0  # budget untouched
    assert failures == [] and tracker.stats.failed == 0
    assert "delivery paused" in caplog.text and "HTTP 401 unauthorized" in caplog.text


async def test_retries_exhausted_become_a_dead_letter(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    provider.faults = Faults(error_rate=1.0)
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.01, max_attempts=3)
    path = tmp_path / "events.db"
    async with Tracker("dub", api_key=KEY, base_url=url, outbox=path, retry=policy) as tracker:
        await tracker.track_lead(**LEAD, customer_external_id="u1")
        await tracker.flush(timeout=10)
    [row] = rows(path)
    assert row["state"] == "dead" and row["attempts"] == 3
    assert "gave up after 3 attempts" in row["last_error"]
    assert tracker.stats.retried == 2 and tracker.stats.failed == 1


async def test_retry_after_is_honoured_and_clamped(
    provider: FakeProvider, url: str, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="asgi_attribution")
    provider.faults = Faults(rate_limit_rate=1.0, retry_after="seconds", retry_after_seconds=3600)
    policy = RetryPolicy(initial_backoff=0.001, max_backoff=0.001, max_retry_after=0.3)
    path = tmp_path / "events.db"
    async with Tracker("dub", api_key=KEY, base_url=url, outbox=path, retry=policy) as tracker:
        await tracker.track_lead(**LEAD, customer_external_id="u1")
        wait_for = [r for r in caplog.records if hasattr(r, "retry_in")]
        deadline = time.monotonic() + 10
        while not wait_for and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            wait_for = [r for r in caplog.records if hasattr(r, "retry_in")]
        provider.faults = Faults()
        await tracker.flush(timeout=10)
    # The backoff alone would be 1 ms; the server asked for an hour; the clamp is 0.3 s.
    assert wait_for[0].retry_in == 0.3
    [row] = rows(path)
    assert row["state"] == "delivered" and row["attempts"] >= 2


async def test_shutdown_leaves_undelivered_events_safely_in_the_store(
    provider: FakeProvider, url: str, tmp_path: Path, caplog: Any
) -> None:
    provider.faults = Faults(error_rate=1.0)
    path = tmp_path / "events.db"
    tracker = Tracker(
        "dub", api_key=KEY, base_url=url, outbox=path, retry=FAST, shutdown_timeout=0.2
    )
    async with tracker:
        ids = [
            (await tracker.track_lead(**LEAD, customer_external_id=f"u{i}")).event_id
            for i in range(10)
        ]
    transport = tracker.transport
    assert isinstance(transport, OutboxTransport) and transport.left_in_store == 10
    assert "10 events left in the outbox" in caplog.text
    assert tracker.stats.dropped == 0  # nothing was lost
    assert states(path) == {"pending": 10}  # claims were given back at shutdown

    # The next start (a deploy, a restart) delivers them.
    provider.faults = Faults()
    async with Tracker("dub", api_key=KEY, base_url=url, outbox=path, retry=FAST) as again:
        await again.flush(timeout=10)
    assert set(provider.count_by_idempotency_key()) == set(ids)
    assert states(path) == {"delivered": 10}


async def test_append_only_tracker_stores_and_never_delivers(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    tracker = Tracker("dub", base_url=url, outbox=path, deliver=False)
    transport = tracker.transport
    assert isinstance(transport, OutboxTransport) and transport.inner is None
    async with tracker:
        result = await tracker.track_lead(**LEAD, customer_external_id="u1")
        await tracker.flush()  # returns at once: nothing to deliver here
        assert transport.delivery is None
    assert result.accepted and states(path) == {"pending": 1}
    assert provider.requests == []


def test_nothing_is_opened_or_started_at_construction(tmp_path: Path) -> None:
    threads = threading.active_count()
    tracker = Tracker("dub", api_key=KEY, outbox=tmp_path / "events.db")
    transport = tracker.transport
    assert isinstance(transport, OutboxTransport)
    store = transport.store
    assert isinstance(store, SQLiteOutbox) and not store.is_open
    assert transport.delivery is None and threading.active_count() == threads
    assert not (tmp_path / "events.db").exists()


async def test_a_lease_gives_a_row_to_one_claimant_until_it_expires(tmp_path: Path) -> None:
    from asgi_attribution import DUB, LeadEvent
    from asgi_attribution.transports.outbox import OutboxRow

    path = tmp_path / "events.db"
    async with SQLiteOutbox(path) as first, SQLiteOutbox(path) as second:
        for i in range(5):
            event = LeadEvent(**LEAD, customer_external_id=f"u{i}")
            await first.append(OutboxRow.from_delivery(Delivery(event, DUB)))
        taken = await first.claim(10, lease=0.3)
        assert len(taken) == 5 and all(r.attempts == 1 for r in taken)
        assert await second.claim(10, lease=60) == []  # leased to the first
        await asyncio.sleep(0.4)  # the first "crashed": its lease runs out
        retaken = await second.claim(10, lease=60)
        assert {r.event_id for r in retaken} == {r.event_id for r in taken}
        assert all(r.attempts == 2 for r in retaken)
        # The first claimant comes back too late: its outcome is ignored.
        await first.delivered(taken[0])
        assert states(path) == {"inflight": 5}
        await second.delivered(retaken[0])
        assert states(path) == {"delivered": 1, "inflight": 4}


async def test_a_row_that_no_longer_makes_an_event_becomes_a_dead_letter(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    async with Tracker("dub", outbox=path, deliver=False) as tracker:
        await tracker.track_lead(**LEAD, customer_external_id="u1")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("""UPDATE outbox SET event = '{"click_id": "bad id!"}'""")
    conn.close()
    async with Tracker("dub", api_key=KEY, base_url=url, outbox=path) as tracker:
        await tracker.flush(timeout=10)
    [row] = rows(path)
    assert row["state"] == "dead" and row["last_error"].startswith("cannot restore event")
    assert provider.requests == []


async def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="is not a usable SQLite outbox: file is not a database"):
        async with SQLiteOutbox(path):
            pass
    with pytest.raises(OutboxError, match=r"no outbox at .*missing\.db: file not found"):
        async with SQLiteOutbox(tmp_path / "missing.db", create=False):
            pass


# -- real processes ---------------------------------------------------------------------------


def start_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tracked_ids(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("TRACKED "):
            ids: list[str] = json.loads(line.removeprefix("TRACKED "))
            return ids
    _, err = process.communicate(timeout=10)
    raise AssertionError(f"worker exited with {process.returncode} before tracking: {err}")


def finish(process: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out


def test_sigkill_mid_delivery_then_restart_delivers_every_event(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    # Slow answers keep deliveries in flight; errors and rate limits leave retries scheduled.
    provider.faults = Faults(
        slow_rate=0.5, slow_seconds=0.3, error_rate=0.15, rate_limit_rate=0.05, seed=11
    )
    path = tmp_path / "events.db"
    first = start_worker("--store", str(path), "--base-url", url, "--track", "40", "--lease", "1")
    try:
        ids = tracked_ids(first)
        assert len(set(ids)) == 40
        wait_until(lambda: len(provider.requests) >= 6, "the first deliveries")
        assert first.poll() is None, "the worker finished before it could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=10)
    assert first.returncode == -signal.SIGKILL
    left = states(path)
    assert left.get("inflight", 0) > 0, left  # killed with deliveries in flight
    assert sum(left.values()) == 40  # every event stored before the crash

    # A restarted process takes over the dead one's claims once their lease expires.
    finish(start_worker("--store", str(path), "--base-url", url, "--lease", "1"))
    assert states(path) == {"delivered": 40}
    counts = provider.count_by_idempotency_key()
    assert set(ids) <= set(counts)  # every event reached the provider at least once
    # No stranger: every request the provider saw belongs to a stored event's key.
    assert {r.idempotency_key for r in provider.requests} <= set(ids)
    delivered = {lead["customerExternalId"] for lead in provider.leads()}
    assert delivered == {f"user_{i}" for i in range(40)}


def test_processes_appending_at_once_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    go = tmp_path / "go"
    processes = [
        start_worker(
            *f"--store {path} --append-only --track 150 --users p{n}_ --wait-for {go}".split()
        )
        for n in range(4)
    ]
    try:
        time.sleep(0.3)  # let them all import and wait at the start line
        go.touch()
        ids = [id_ for p in processes for id_ in tracked_ids(p)]
        for p in processes:
            finish(p)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    stored = rows(path)
    assert len(stored) == 600 and len(set(ids)) == 600
    assert sorted(r["event_id"] for r in stored) == sorted(ids)
    customers = {json.loads(r["event"])["customer_external_id"] for r in stored}
    assert customers == {f"p{n}_{i}" for n in range(4) for i in range(150)}
    assert {r["state"] for r in stored} == {"pending"}
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_stopping_lets_an_attempt_on_the_wire_finish_instead_of_sending_it_twice(
    provider: FakeProvider, url: str, tmp_path: Path
) -> None:
    provider.faults = Faults(slow_rate=1.0, slow_seconds=0.5)  # recorded on arrival, then slow
    store = SQLiteOutbox(tmp_path / "events.db")
    tracker = Tracker(
        "dub", api_key=KEY, base_url=url, outbox=store, retry=FAST, shutdown_timeout=0
    )
    await tracker.start()
    await tracker.track_lead(**LEAD, customer_external_id="u1")
    while not provider.requests:  # the attempt reached the provider
        await asyncio.sleep(0.01)
    await tracker.aclose()  # e.g. SIGTERM on a deploy, while the answer is still coming
    await store.open()
    try:
        status = await store.status()
    finally:
        await store.close()
    # Recorded as delivered: a next worker will not send it again.
    assert status.counts["delivered"] == 1 and status.counts["pending"] == 0


async def test_an_event_id_appended_twice_is_stored_and_delivered_once(tmp_path: Path) -> None:
    # The unique event id keeps the first row; the second append is stored all the same.
    from asgi_attribution import DUB, LeadEvent

    from .scripted import Scripted

    path = tmp_path / "events.db"
    inner = Scripted()
    transport = OutboxTransport(SQLiteOutbox(path), inner, poll_interval=0.05)
    same = [LeadEvent(**LEAD, customer_external_id=f"u{i}", event_id="evt_same_1") for i in (1, 2)]
    first, again = [await transport.send(Delivery(event, DUB)) for event in same]
    other = await transport.send(Delivery(LeadEvent(**LEAD, customer_external_id="u3"), DUB))
    await transport.flush(10)
    await transport.aclose()
    assert first.durable and again.durable and other.durable
    assert inner.sent == {"evt_same_1": 1, other.event_id: 1}
    [kept] = [row for row in rows(path) if row["event_id"] == "evt_same_1"]
    assert json.loads(kept["event"])["customer_external_id"] == "u1"  # the first one kept


@pytest.mark.parametrize("version", [3, 99])
async def test_a_file_of_another_schema_version_is_refused_naming_it(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "events.db"
    async with Tracker("dub", outbox=path, deliver=False) as tracker:
        await tracker.track_lead(**LEAD, customer_external_id="u1")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {version}")  # an earlier or a later version's file
    conn.close()
    which = "an older" if version == 3 else "a newer"
    with pytest.raises(OutboxError, match=rf"schema version {version}, made by {which} version"):
        await SQLiteOutbox(path).open()
    assert states(path) == {"pending": 1}  # left as it was


async def test_a_sqlite_file_without_an_outbox_is_refused_without_create(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(OutboxError, match=r"app\.db is not an asgi-attribution outbox"):
        await SQLiteOutbox(path, create=False).open()
    conn = sqlite3.connect(path)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert names == {"users"}  # nothing created in it
