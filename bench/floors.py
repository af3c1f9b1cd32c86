"""Floors for the durable append: one WAL commit of one row, and of 50 rows, per ``synchronous``.

Plain ``sqlite3`` in WAL mode on a temporary file, the outbox's row size (a 216-byte lead),
autocommit off, ``BEGIN``/``COMMIT`` around each batch: what no outbox can beat on this disk.
Also the time to validate one lead (the part of a signup no store can skip).
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


def _commits(path: Path, synchronous: str, rows: int, commits: int) -> float:
    """Median seconds per commit of ``rows`` rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, body TEXT)")
        n = 0
        samples = []
        for _ in range(commits):
            batch = [(f"evt_{n + i}_{synchronous}_{rows}", BODY) for i in range(rows)]
            n += rows
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO outbox VALUES (?, ?)", batch)
            conn.execute("COMMIT")
            samples.append(time.perf_counter() - t0)
        return median(samples)
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
            out["sqlite"][sync] = {
                "one_row_commit_us": round(one * 1e6, 1),
                "fifty_row_commit_us": round(fifty * 1e6, 1),
                "per_row_in_fifty_us": round(fifty / 50 * 1e6, 1),
            }
    out["validate_lead_us"] = round(_validation() * 1e6, 2)
    return out
