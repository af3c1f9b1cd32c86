"""Floors for the durable append: one WAL commit of one row, and of 50 rows, per ``synchronous``.

Plain ``sqlite3`` in WAL mode on a temporary file, the outbox's row size (a 216-byte lead),
autocommit off, ``BEGIN``/``COMMIT`` around each batch: what no outbox can beat on this disk.
Also the time to validate one lead (the part of a signup no store can skip), a one-row commit
of the outbox's own append (its ``INSERT`` into its table: the row, its unique event id and its
due index), and ``asyncio.gather`` of 50 empty coroutines (what a burst of 50 costs the loop
before any work).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import median

BODY = json.dumps({"clickId": "c" * 25, "eventName": "Sign up", "pad": "x" * 150})


def schema_insert() -> str:
    """The store's own append statement, with the values that vary in a real append bound
    and the rest fixed, so it takes (id, body)."""
    from asgi_attribution.transports.outbox._sqlite import INSERT

    marks = "VALUES (?, ?, ?, ?, ?, ?, ?)"
    assert marks in INSERT, INSERT
    return INSERT.replace(marks, "VALUES (?, 'dub', 'lead', ?, 1.0, 1.0, 1.0)")


def open_plain(
    path: Path, synchronous: str, schema: bool = False
) -> tuple[sqlite3.Connection, str]:
    """A WAL connection (autocommit off) and its insert: a one-column table, or the outbox's."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if schema:
        from asgi_attribution.transports.outbox._sqlite_schema import prepare

        prepare(conn, path, True)
        return conn, schema_insert()
    conn.execute("CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, body TEXT)")
    return conn, "INSERT INTO outbox VALUES (?, ?)"


def commit_batches(
    conn: sqlite3.Connection, insert: str, rows: int, commits: int, tag: str, begin: bool = True
) -> list[float]:
    """Seconds of each of ``commits`` commits of ``rows`` rows (ids unique per ``tag``);
    ``begin=False``: one autocommit statement per row (as the store commits a lone append)."""
    samples = []
    for c in range(commits):
        batch = [(f"evt_{tag}_{c}_{i}", BODY) for i in range(rows)]
        t0 = time.perf_counter()
        if begin:
            conn.execute("BEGIN")
            conn.executemany(insert, batch)
            conn.execute("COMMIT")
        else:
            for values in batch:
                conn.execute(insert, values)
        samples.append(time.perf_counter() - t0)
    return samples


def _commits(path: Path, synchronous: str, rows: int, commits: int, schema: bool = False) -> float:
    """Median seconds per commit of ``rows`` rows (``schema``: the outbox's own append)."""
    conn, insert = open_plain(path, synchronous, schema)
    try:
        return median(commit_batches(conn, insert, rows, commits, f"{synchronous}_{rows}"))
    finally:
        conn.close()


def _validation() -> float:
    from asgi_attribution import LeadEvent

    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        LeadEvent(
            click_id="cm3kf8x2a0001bench9yz7q", event_name="Sign up", customer_external_id=f"u{i}"
        )
    return (time.perf_counter() - t0) / n


def run(commits: int = 300) -> dict[str, Any]:
    out: dict[str, Any] = {"sqlite": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("FULL", "NORMAL"):
            one = _commits(Path(tmp) / f"one-{sync}.db", sync, 1, commits)
            fifty = _commits(Path(tmp) / f"fifty-{sync}.db", sync, 50, max(20, commits // 5))
            ours = _commits(Path(tmp) / f"schema-{sync}.db", sync, 1, commits, schema=True)
            out["sqlite"][sync] = {
                "one_row_commit_us": round(one * 1e6, 1),
                "fifty_row_commit_us": round(fifty * 1e6, 1),
                "per_row_in_fifty_us": round(fifty / 50 * 1e6, 1),
                "schema_one_row_commit_us": round(ours * 1e6, 1),
            }
    out["validate_lead_us"] = round(_validation() * 1e6, 2)
    out["gather_50_us"] = round(_gather50() * 1e6, 1)
    return out


def _gather50() -> float:
    """``asyncio.gather`` of 50 coroutines that do nothing: what a burst of 50 concurrent
    signups costs the loop before any of them does any work (a task each)."""
    import asyncio

    async def nothing() -> None:
        return None

    async def rounds() -> float:
        samples = []
        for _ in range(200):
            t0 = time.perf_counter()
            await asyncio.gather(*(nothing() for _ in range(50)))
            samples.append(time.perf_counter() - t0)
        return median(samples)

    return asyncio.run(rounds())
