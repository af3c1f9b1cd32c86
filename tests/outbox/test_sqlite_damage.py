"""A damaged SQLite outbox file and a failing disk, on real files.

Damage is made as it happens: pages of the file overwritten (at ``page_size * n``) with random
bytes, table pages and an index page, while the file is closed or open. A failing disk is a
process whose file size limit (``RLIMIT_FSIZE``) makes SQLite's writes fail with
``disk I/O error``, as a file system remounted read-only does; it needs no root.

Each case counts sent, delivered, duplicates, reported (by id: ``status().unreadable``, or an
ERROR line naming the event) and silently lost (none of these), which must be 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from asgi_attribution import DUB, LeadEvent
from asgi_attribution.transports import Delivery, OutboxTransport, SQLiteOutbox, TrackResult

from . import test_sqlite_commits
from .scripted import Scripted

pytestmark = pytest.mark.anyio

small_disk = test_sqlite_commits.small_disk  # the fixture: a small tmpfs

ROOT = Path(__file__).parents[2]


def lead(i: int) -> Delivery:
    # About 300 bytes a row, as in the measured file: 2,000 rows on 377 pages.
    event = LeadEvent(
        click_id=f"c{i}",
        event_name="Sign up",
        customer_external_id=f"u{i}",
        metadata={"pad": "x" * 300},
    )
    return Delivery(event, DUB)


async def fill(path: Path, count: int) -> list[TrackResult]:
    transport = OutboxTransport(SQLiteOutbox(path), Scripted(), deliver=False)
    results = [await transport.send(lead(i)) for i in range(count)]
    await transport.aclose()
    return results


def pages_of(path: Path) -> tuple[int, dict[str, list[int]]]:
    """The page size, and the leaf pages of each table and index (from ``dbstat``)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        leaves: dict[str, list[int]] = {}
        query = "SELECT name, pageno FROM dbstat WHERE pagetype = 'leaf' ORDER BY pageno"
        for name, page in conn.execute(query):
            leaves.setdefault(name, []).append(page)
        return size, leaves
    finally:
        conn.close()


def overwrite(path: Path, size: int, pages: list[int], seed: int = 26) -> None:
    """Random bytes over whole pages (page numbers count from 1), as a bad disk leaves them."""
    rnd = random.Random(seed)
    with open(path, "r+b") as file:
        for page in pages:
            file.seek((page - 1) * size)
            file.write(rnd.randbytes(size))


def event_ids_by_row(path: Path) -> dict[int, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT id, event_id FROM outbox"))
    finally:
        conn.close()


def readable_rows(path: Path, rows: dict[int, str]) -> set[str]:
    """Event ids whose row a plain connection can still read by its id."""
    conn = sqlite3.connect(path)
    found = set()
    try:
        for rid, event_id in rows.items():
            try:
                if conn.execute("SELECT event FROM outbox WHERE id = ?", (rid,)).fetchone():
                    found.add(event_id)
            except sqlite3.DatabaseError:
                pass
    finally:
        conn.close()
    return found


def named(unreadable: tuple[str, ...], rows: dict[int, str]) -> set[str]:
    """The event ids ``status().unreadable`` names (``row N`` where no index named it)."""
    return {rows[int(n.removeprefix("row "))] if n.startswith("row ") else n for n in unreadable}


@pytest.mark.parametrize(
    "indexes",
    [["outbox_due"], ["sqlite_autoindex_outbox_1"], ["outbox_due", "sqlite_autoindex_outbox_1"]],
)
async def test_a_damaged_file_delivers_its_readable_rows_and_names_the_others(
    tmp_path: Path, caplog: Any, indexes: list[str]
) -> None:
    # As measured: 8 of 377 pages of a 2,000-row outbox overwritten, one of them an index page.
    path = tmp_path / "events.db"
    stored = await fill(path, 2000)
    rows = event_ids_by_row(path)
    size, leaves = pages_of(path)
    table = leaves["outbox"]
    # With both indexes hit, no index names the rows: the table is read by ranges of ids.
    hit = [table[n * len(table) // 8] for n in range(1, 8)] + [leaves[i][0] for i in indexes]
    overwrite(path, size, hit)
    readable = readable_rows(path, rows)
    assert 1000 < len(readable) < 2000  # the damage is real, and local

    inner = Scripted()
    store = SQLiteOutbox(path, create=False)
    transport = OutboxTransport(store, inner, poll_interval=0.05)
    await transport.start()
    new = [await transport.send(lead(i)) for i in range(2000, 2100)]
    await transport.flush(timeout=120)
    status = await store.status()
    await transport.aclose()

    sent = {r.event_id for r in stored + new}
    delivered = set(inner.sent)
    duplicates = sum(n - 1 for n in inner.sent.values())
    reported = named(status.unreadable, rows)
    silently_lost = sent - delivered - reported
    assert (len(sent), duplicates, silently_lost) == (2100, 0, set())
    assert readable <= delivered  # every row it can read is delivered
    assert reported == {r.event_id for r in stored} - delivered and not reported & delivered
    assert not any(r.durable for r in new)  # damage known: not acknowledged as stored
    assert {r.event_id for r in new} <= delivered  # delivered from memory instead
    assert all(r.durable for r in stored)
    assert not status.healthy and status.counts["pending"] == 0
    assert "is damaged" in caplog.text
    assert "will be delivered by the next worker" not in caplog.text


async def test_damage_while_open_is_found_and_new_events_go_to_the_fallback(
    tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "events.db"
    inner = Scripted()
    inner.gate = asyncio.Event()  # attempts wait: rows stay in the file
    store = SQLiteOutbox(path)
    transport = OutboxTransport(store, inner, poll_interval=0.05, concurrency=1)
    before = [await transport.send(lead(i)) for i in range(1000)]
    rows = event_ids_by_row(path)
    size, leaves = pages_of(path)
    table = leaves["outbox"]
    overwrite(path, size, [table[len(table) // 3], table[2 * len(table) // 3]])
    # Another writer's commit makes the open connections read the file again.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO outbox_meta (key, value) VALUES ('touched', '1')")
    conn.close()
    inner.gate.set()
    for _ in range(600):  # the claims reach the damaged pages
        if store.unreadable:
            break
        await asyncio.sleep(0.05)
    after = [await transport.send(lead(i)) for i in range(1000, 1100)]
    await transport.flush(timeout=120)
    status = await store.status()
    await transport.aclose()

    sent = {r.event_id for r in before + after}
    delivered = set(inner.sent)
    reported = named(status.unreadable, rows)
    assert sum(n - 1 for n in inner.sent.values()) == 0
    assert sent - delivered - reported == set()  # silently lost: none
    assert reported and len(reported) < 40  # two pages' worth of rows, named
    assert all(r.durable for r in before)
    assert not any(r.durable for r in after) and {r.event_id for r in after} <= delivered
    assert "is damaged" in caplog.text


# -- a failing disk ---------------------------------------------------------------------------

FAILING = textwrap.dedent(
    """
    import asyncio, json, logging, os, resource, sys
    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    from asgi_attribution.transports import OutboxTransport, SQLiteOutbox
    from tests.outbox.scripted import Scripted
    from tests.outbox.test_sqlite_damage import lead

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    async def main():
        path = sys.argv[1]
        deliver = sys.argv[4] == "deliver"
        inner = Scripted()
        # Delivering, the first events wait (a 401 pauses delivery) until the disk fails;
        # append-only, what the file holds stays there. The fallback sends from memory.
        inner.unauthorized = deliver
        transport = OutboxTransport(SQLiteOutbox(path), inner, deliver=deliver,
                                    poll_interval=0.05, pause_interval=0.2, shutdown_timeout=3)
        first = [await transport.send(lead(i)) for i in range(300)]
        # The disk fails: no write may grow a file past its size now.
        limit = max(os.path.getsize(path), os.path.getsize(path + "-wal"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        inner.unauthorized = False
        later = []
        for i in range(300, 600):
            later.append(await transport.send(lead(i)))
            await asyncio.sleep(0)
        await asyncio.sleep(1)
        await transport.aclose()
        results = [
            {"id": r.event_id, "durable": r.durable, "status": r.status} for r in first + later
        ]
        print(json.dumps({"results": results, "sent": dict(inner.sent)}))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["deliver", "append-only"])
def test_a_failing_disk_names_what_it_could_not_confirm_and_promises_nothing(
    tmp_path: Path, mode: str
) -> None:
    path = tmp_path / "events.db"
    done = subprocess.run(
        [sys.executable, "-c", FAILING, str(path), str(ROOT), str(ROOT / "src"), mode],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    results, sent = out["results"], out["sent"]
    log = done.stderr
    assert "disk I/O error" in log
    assert "will be delivered by the next worker" not in log  # never promised
    named_in_log = {
        word.strip(",")
        for line in log.splitlines()
        if line.startswith("ERROR ") and "are not confirmed" in line
        for word in line.split()
    }
    durable = {r["id"] for r in results if r["durable"]}
    not_durable = {r["id"] for r in results if not r["durable"]}
    assert durable and not_durable  # the disk did fail midway
    assert not_durable <= set(sent)  # the fallback delivered each one from memory
    undelivered_durable = durable - set(sent)
    assert undelivered_durable <= named_in_log  # each one named by id, none promised
    silently_lost = {r["id"] for r in results} - set(sent) - named_in_log
    assert silently_lost == set()
    assert all(n == 1 for n in sent.values())
    assert all(r["status"] == "queued" for r in results)  # no signup failed


# -- a full disk, a deleted file --------------------------------------------------------------


@pytest.mark.parametrize("small_disk", ["2m"], indirect=True)
async def test_outcomes_a_full_disk_refused_are_written_once_it_has_room(small_disk: Path) -> None:
    # Every event fails once (a 503), so each needs an outcome written while the disk is full.
    # The lease is ten minutes: rows that wait for it to expire cannot pass this test.
    inner = Scripted(fail_first=1)
    store = SQLiteOutbox(small_disk / "events.db")
    transport = OutboxTransport(store, inner, poll_interval=0.05, lease=600)
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * 900_000)  # freed: room enough for the WAL to go on
    results: list[TrackResult] = []
    for i in range(3000):
        results.append(await transport.send(lead(i)))
        if sum(not r.durable for r in results) > 50:
            break
        if i % 20 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(1)  # deliveries meet the full disk
    filler.unlink()
    await transport.flush(timeout=120)
    status = await store.status()
    await transport.aclose()
    sent = {r.event_id for r in results}
    assert any(r.durable for r in results) and not all(r.durable for r in results)
    assert set(inner.sent) == sent and all(n == 1 for n in inner.sent.values())
    assert status.unfinished == 0 and status.counts["delivered"] == sum(r.durable for r in results)


async def test_a_deleted_file_counts_exactly_the_rows_left_in_it(
    tmp_path: Path, caplog: Any
) -> None:
    inner = Scripted()
    inner.unauthorized = True  # delivery paused: every row stays in the file
    transport = OutboxTransport(
        SQLiteOutbox(tmp_path / "events.db"), inner, poll_interval=0.05, shutdown_timeout=1
    )
    before = [await transport.send(lead(i)) for i in range(500)]
    for name in ("events.db", "events.db-wal", "events.db-shm"):
        (tmp_path / name).unlink()
    after = [await transport.send(lead(i)) for i in range(500, 550)]
    await transport.aclose()
    assert all(r.durable for r in before) and not any(r.durable for r in after)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(line.startswith("500 events were left in the outbox file") for line in lines)
    reported = {i for r in caplog.records for i in getattr(r, "event_ids", ())}
    assert {r.event_id for r in after} <= reported  # the fallback's, named at shutdown
