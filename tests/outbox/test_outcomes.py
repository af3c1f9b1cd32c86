"""What the outbox keeps about each delivery and how it is operated: outcomes on rows, listing
by state, dead letters the provider would not record again, the pause on a revoked key,
retention and VACUUM, damaged files reported by row id. Real SQLite files throughout."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution.transports import Delivery, OutboxTransport, SQLiteOutbox, TrackResult

from .scripted import Scripted
from .test_sqlite_faults import lead

pytestmark = pytest.mark.anyio


class Answers(Scripted):
    """Every third lead a duplicate, as Dub answers 200 with ``link: null``."""

    async def attempt(self, delivery: Delivery) -> TrackResult:
        await super().attempt(delivery)  # counted as sent
        if int(delivery.event.model_dump()["click_id"][1:]) % 3 == 0:
            return TrackResult(
                "sent", delivery.event, outcome="duplicate", outcome_reason="duplicate_lead"
            )
        return TrackResult("sent", delivery.event, outcome="recorded")


async def test_outcomes_are_kept_on_rows_listed_and_passed_to_on_delivered(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, str | None]] = []
    store = SQLiteOutbox(tmp_path / "events.db")
    transport = OutboxTransport(
        store,
        Answers(),
        poll_interval=0.05,
        on_delivered=lambda d, r: seen.append((d.event.event_id, r.outcome)),
    )
    results = [await transport.send(lead(i)) for i in range(9)]
    await transport.flush(timeout=10)
    await transport.aclose()
    assert sorted(seen) == sorted(
        (r.event_id, "duplicate" if i % 3 == 0 else "recorded") for i, r in enumerate(results)
    )
    async with SQLiteOutbox(tmp_path / "events.db", create=False) as again:
        not_recorded = await again.list("not_recorded")
        delivered = await again.list("delivered")
        assert await again.list("pending") == []
    assert {r.event_id for r in not_recorded} == {results[i].event_id for i in (0, 3, 6)}
    assert {r.outcome_reason for r in not_recorded} == {"duplicate_lead"}
    assert len(delivered) == 9 and {r.outcome for r in delivered} == {"duplicate", "recorded"}


async def test_a_click_not_found_dead_letter_is_retried_only_with_force(
    tmp_path: Path, caplog: Any
) -> None:
    inner = Scripted()
    inner.final_code = "click_not_found"
    transport = OutboxTransport(tmp_path / "events.db", inner, poll_interval=0.05)
    [result] = [await transport.send(lead(1))]
    await transport.flush(timeout=10)
    await transport.aclose()
    async with SQLiteOutbox(tmp_path / "events.db", create=False) as store:
        [dead] = await store.list("dead")
        assert dead.event_id == result.event_id and dead.error_code == "click_not_found"
        assert await store.retry_dead() == 0  # refused, and told why
        assert "keeps it 7 days" in caplog.text and "link: null" in caplog.text
        assert await store.retry_dead([dead.event_id], force=True) == 1
        assert [r.event_id for r in await store.list("pending")] == [dead.event_id]


async def test_a_revoked_key_pauses_claiming_and_resumes_on_the_first_2xx(
    tmp_path: Path, caplog: Any
) -> None:
    inner = Scripted()
    inner.unauthorized = True
    store = SQLiteOutbox(tmp_path / "events.db")
    transport = OutboxTransport(store, inner, poll_interval=0.02, pause_interval=0.2)
    results = [await transport.send(lead(i)) for i in range(50)]
    await asyncio.sleep(1.0)
    probes = sum(inner.attempts.values())
    pending = await store.list("pending", limit=100)
    assert len(pending) == 50 and all(r.attempts == 0 for r in pending)  # budgets untouched
    assert probes <= transport.concurrency + 1.0 / 0.2 + 2  # one probe per interval, not 50
    paused = [r for r in caplog.records if "delivery paused" in r.getMessage()]
    assert len(paused) == 1 and paused[0].levelno == logging.ERROR  # once a minute at most
    assert "events held" in paused[0].getMessage() and "401" in paused[0].getMessage()
    inner.unauthorized = False  # the key is fixed
    assert transport.delivery is not None
    while transport.delivery.pause.active:  # until the next probe gets its 2xx
        await asyncio.sleep(0.02)
    await transport.flush(timeout=20)
    await transport.aclose()
    assert set(inner.sent) == {r.event_id for r in results}
    assert "delivery resumed" in caplog.text


async def test_delivered_rows_expire_in_batches_and_vacuum_shrinks_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    store = SQLiteOutbox(path, retention=0.0, purge_batch=100)
    transport = OutboxTransport(store, Scripted(), poll_interval=0.05, concurrency=50)
    for i in range(1000):
        await transport.send(lead(i))
    await transport.flush(timeout=30)
    await transport.aclose()
    big = path.stat().st_size
    async with SQLiteOutbox(path, create=False, retention=0.0, purge_batch=100) as again:
        assert (await again.status()).counts["delivered"] == 1000
        await again.maintain()  # at most ten batches of 100 per call
        assert (await again.status()).counts["delivered"] == 0
        await again.vacuum()
    assert path.stat().st_size < big / 2


async def test_a_damaged_file_is_reported_with_the_unreadable_row_ids(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    transport = OutboxTransport(path, Scripted(), deliver=False)
    for i in range(300):
        await transport.send(lead(i))
    await transport.aclose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    meta = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox_meta'").fetchone()
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = path.read_bytes()
    # Table leaf pages start with 0x0D; scribble over the cell pointers of one in the middle.
    leaves = [n + 1 for n in range(1, len(data) // size) if data[n * size] == 0x0D]
    leaves.remove(meta[0])
    with open(path, "r+b") as file:
        file.seek((leaves[len(leaves) // 2] - 1) * size + 8)
        file.write(b"\xff" * 200)
    inner = Scripted()
    store = SQLiteOutbox(path, create=False)
    worker = OutboxTransport(store, inner, poll_interval=0.05)
    await worker.start()
    status = await store.status()
    assert not status.healthy and any("quick_check" in p for p in status.problems)
    assert store.unreadable and any("rows unreadable (ids" in p for p in status.problems)
    await worker.flush(timeout=20)
    await worker.aclose()
    unreadable = set(store.unreadable)  # with rows next to the damage that cannot be written
    assert len(unreadable) < 60 and all(isinstance(i, int) for i in unreadable)
    assert len(inner.sent) == 300 - len(unreadable)  # the rest is delivered; each named by id
