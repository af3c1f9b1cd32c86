"""A lower bound for the burst goal: the fewest steps any design built on our blocks takes.

A floor says what the machine costs (a plain commit); a bound says what the package's own
blocks cost when nothing else runs. :func:`burst_bounds`: 50 concurrent signups, each validated
in its own coroutine and returning once one 50-row commit (the floor's own table) holds them
all. The distance between ours and the bound is what the outbox's bookkeeping costs; the
distance between the bound and the floor is what no rearranging of our code can win back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

from .floors import BODY

CLICK_ID = "cm3kf8x2a0001bench9yz7q"


async def burst_bounds(conn: sqlite3.Connection, insert: str, n: int, tag: str) -> list[float]:
    """Seconds of each of ``n`` bursts of 50 signups made durable by one 50-row commit."""
    from asgi_attribution import DUB
    from asgi_attribution._tracker import build_event

    loop = asyncio.get_running_loop()
    rows: list[tuple[str, str]] = []
    written: list[asyncio.Future[None]] = []

    def commit() -> None:
        batch, rows[:] = list(rows), []
        conn.execute("BEGIN")
        conn.executemany(insert, batch)
        conn.execute("COMMIT")
        written.pop().set_result(None)

    async def signup(external_id: str) -> None:
        fields = {"customer_external_id": external_id, "event_name": "Sign up"}
        delivery, _ = build_event(DUB, "lead", fields, click_id=CLICK_ID)
        if not rows:  # the first of this loop iteration: one commit for all of them
            written.append(loop.create_future())
            loop.call_soon(commit)
        future = written[-1]
        rows.append((delivery.event.event_id, BODY))
        await future

    samples = []
    for b in range(n):
        t0 = time.perf_counter()
        await asyncio.gather(*(signup(f"{tag}_{b}_{i}") for i in range(50)))
        samples.append(time.perf_counter() - t0)
        await asyncio.sleep(0)
    return samples
