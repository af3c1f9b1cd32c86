"""The SQLite outbox against its own failures, on real files: a deleted file, a write lock held
longer than any wait, a wall clock stepped or running ahead, a store missing at startup.

Each case counts what was sent, what was delivered, what was reported (``durable=False``, an
ERROR) and what was lost; silently lost (reported stored, never delivered) must be 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import DUB, LeadEvent
from asgi_attribution.transports import Delivery, OutboxTransport, SQLiteOutbox, TrackResult

from .scripted import Scripted

pytestmark = pytest.mark.anyio


def lead(i: int) -> Delivery:
    return Delivery(
        LeadEvent(click_id=f"c{i}", event_name="Sign up", customer_external_id=f"u{i}"), DUB
    )


def silently_lost(results: list[TrackResult], inner: Scripted) -> list[str]:
    """Events reported stored (durable) that the provider never got."""
    return [r.event_id or "" for r in results if r.durable and not inner.sent[r.event_id or ""]]


@pytest.mark.parametrize("synchronous", ["normal", "full"])  # on the loop; on the thread
async def test_a_deleted_file_stops_appends_and_nothing_is_reported_stored(
    tmp_path: Path, caplog: Any, synchronous: Any
) -> None:
    path = tmp_path / "events.db"
    inner = Scripted()
    store = SQLiteOutbox(path, synchronous=synchronous)
    transport = OutboxTransport(store, inner, poll_interval=0.05)
    before = [await transport.send(lead(i)) for i in range(200)]
    for name in ("events.db", "events.db-wal", "events.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    after = [await transport.send(lead(i)) for i in range(200, 400)]
    await transport.flush(timeout=30)
    await transport.aclose()
    assert all(r.durable for r in before)
    assert not any(r.durable or r.accepted for r in after)  # never reported stored
    assert "was deleted or replaced while open" in caplog.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([r for r in errors if r.getMessage().startswith("outbox file")]) == 1  # once
    sent = {r.event_id for r in before + after}
    assert set(inner.sent) == sent  # all 400 delivered: the first 200 from the open file
    assert silently_lost(before + after, inner) == []
    assert "stored and will be delivered by the next worker" not in caplog.text


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_a_write_lock_held_35s_never_holds_a_signup(
    tmp_path: Path, caplog: Any, synchronous: Any
) -> None:
    path = tmp_path / "events.db"
    inner = Scripted()
    store = SQLiteOutbox(path, synchronous=synchronous, append_timeout=1.0)
    transport = OutboxTransport(store, inner, poll_interval=0.05, append_timeout=1.0)
    first = await transport.send(lead(0))
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:  # a shell, a backup, a long purge
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(35)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(5)
    results, waits = [], []
    for i in range(1, 21):
        started = time.monotonic()
        results.append(await transport.send(lead(i)))
        waits.append(time.monotonic() - started)
        await asyncio.sleep(0.2)
    assert max(waits) < transport.append_timeout + 0.5
    assert not any(r.durable for r in results) and all(r.status == "queued" for r in results)
    await asyncio.to_thread(holder.join)  # the lock is held for 35 s in all
    await asyncio.sleep(1.1)  # the store is tried again at most every second
    later = [await transport.send(lead(i)) for i in range(21, 31)]
    assert all(r.durable for r in later)
    await transport.flush(timeout=60)
    await transport.aclose()
    everything = [first, *results, *later]
    assert set(inner.sent) == {r.event_id for r in everything}
    assert silently_lost(everything, inner) == []
    assert "20 events during the outage" in caplog.text


class SteppedClock:
    """A wall clock a test can step (the machine's clock is never touched)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.mark.parametrize("step", [3600.0, -3600.0])
async def test_a_stepped_wall_clock_neither_dead_letters_nor_stalls(
    tmp_path: Path, step: float
) -> None:
    clock = SteppedClock()
    store = SQLiteOutbox(tmp_path / "events.db", clock=clock)
    inner = Scripted(fail_first=3)  # every event retries three times: budgets are in play
    transport = OutboxTransport(store, inner, poll_interval=0.05, concurrency=50)
    results = [await transport.send(lead(i)) for i in range(200)]
    while sum(inner.attempts.values()) < 200:
        await asyncio.sleep(0.01)
    clock.offset = step  # NTP, a resumed VM, an operator: mid-retries
    await transport.flush(timeout=60)
    status = await store.status()
    await transport.aclose()
    assert status.counts["dead"] == 0 and status.unfinished == 0  # no dead letter, no stall
    assert set(inner.sent) == {r.event_id for r in results}
    assert all(n == 1 for n in inner.sent.values())


async def test_a_worker_whose_clock_runs_120s_ahead_steals_no_live_lease(
    tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "events.db"
    slow, fast = Scripted(), Scripted()
    slow.gate = asyncio.Event()  # worker A's attempts hang until the test lets them finish
    a = OutboxTransport(SQLiteOutbox(path), slow, poll_interval=0.05, lease=30)
    results = [await a.send(lead(i)) for i in range(200)]
    while len(slow.attempts) < a.concurrency:
        await asyncio.sleep(0.01)
    ahead = SQLiteOutbox(path, clock=SteppedClock(120.0))
    b = OutboxTransport(ahead, fast, poll_interval=0.05, lease=30)
    await b.start()
    while len(fast.sent) < 200 - a.concurrency:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # B had every chance to take A's leases
    assert not set(fast.attempts) & set(slow.attempts)  # not one lease stolen
    slow.gate.set()
    await a.flush(timeout=30)
    await b.aclose()
    await a.aclose()
    sent = slow.sent + fast.sent
    assert set(sent) == {r.event_id for r in results} and all(n == 1 for n in sent.values())
    assert "the wall clock is +120s from the outbox's clock" in caplog.text


async def test_a_store_missing_at_startup_is_opened_in_the_background(
    tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "not-yet" / "events.db"  # its directory appears later (a mount)
    inner = Scripted()
    transport = OutboxTransport(path, inner, poll_interval=0.05)
    await transport.start()  # does not raise
    assert "unavailable at startup" in caplog.text and not transport.is_open
    early = await transport.send(lead(0))
    assert early.status == "queued" and not early.durable
    os.makedirs(path.parent)
    while not transport.is_open:
        await asyncio.sleep(0.05)
    late = await transport.send(lead(1))
    await transport.flush(timeout=10)
    await transport.aclose()
    assert late.durable and set(inner.sent) == {early.event_id, late.event_id}


async def test_without_fallback_a_store_failure_is_outbox_write_failed(tmp_path: Path) -> None:
    from asgi_attribution import DeliveryError

    transport = OutboxTransport(tmp_path / "missing" / "events.db", Scripted(), fallback=None)
    with pytest.raises(DeliveryError) as caught:
        await transport.send(lead(0))
    await transport.aclose()
    assert caught.value.code == "outbox_write_failed" and caught.value.retryable


@pytest.mark.parametrize("synchronous", ["normal", "full"])  # on the loop; on the thread
async def test_an_append_the_file_refuses_goes_to_the_fallback_and_is_delivered(
    tmp_path: Path, caplog: Any, synchronous: Any
) -> None:
    # A trigger refuses every insert, as a full disk or a damaged page would: the append fails,
    # the signup does not, and the event is delivered from memory instead.
    path = tmp_path / "events.db"
    inner = Scripted()
    transport = OutboxTransport(
        SQLiteOutbox(path, synchronous=synchronous), inner, poll_interval=0.05
    )
    before = [await transport.send(lead(i)) for i in range(5)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    refused = [await transport.send(lead(i)) for i in range(5, 15)]
    conn.execute("DROP TRIGGER refuse")
    conn.close()
    await asyncio.sleep(1.1)  # the store is tried again at most every second
    after = [await transport.send(lead(i)) for i in range(15, 20)]
    await transport.flush(timeout=30)
    await transport.aclose()
    assert all(r.durable for r in before + after)
    assert not any(r.durable for r in refused) and all(r.status == "queued" for r in refused)
    assert "refused" in caplog.text
    everything = before + refused + after
    assert set(inner.sent) == {r.event_id for r in everything}  # none lost
    assert all(n == 1 for n in inner.sent.values())
    assert silently_lost(everything, inner) == []
