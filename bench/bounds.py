"""Lower bounds for two goals of issue 16: the fewest steps any design built on our blocks takes.

A floor says what the machine costs (a raw protocol client, a plain commit); a bound says what
the package's own blocks cost when nothing else runs: the lead validated and checked as
``track_lead`` does (pydantic), rendered (``Provider.render``), sent by the engine, its answer
read (``Provider.outcome``). No registry of jobs, no counters, no ``Tracking``, no retries or
pauses: none of what makes an accepted event end delivered, stored or reported. The distance
between ours and the bound is what those cost; the distance between the bound and the floor is
what no rearranging of our code can win back without replacing those blocks.

- :func:`delivery_bound`: ``track_lead`` -> a deque -> c workers -> engine -> outcome, CPU per
  event as ``bench/delivery.py`` measures the whole path;
- :func:`burst_bounds`: 50 concurrent signups, each validated in its own coroutine and
  returning once one 50-row commit (the floor's own table) holds them all.
"""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import time
from collections import deque
from typing import Any

from .floors import BODY

CLICK_ID = "cm3kf8x2a0001bench9yz7q"


async def delivery_bound(url: str, ctx: ssl.SSLContext | None, c: int, n: int) -> float:
    """Client CPU seconds per event of the fewest steps from ``track_lead`` to the answer."""
    from asgi_attribution import DUB, TrackResult
    from asgi_attribution._tracker import build_event
    from asgi_attribution.transports._http import parse_json
    from asgi_attribution.transports.engine import Engine

    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    engine = Engine(url, concurrency=c, ssl=ctx, headers=headers)
    queue: deque[Any] = deque()
    ready, idle = asyncio.Event(), asyncio.Event()
    done = [0, 0]  # delivered, in flight

    def track_lead(**fields: Any) -> TrackResult:
        delivery, _ = build_event(DUB, "lead", fields, "customer_external_id", click_id=CLICK_ID)
        queue.append(delivery)
        ready.set()
        idle.clear()
        return TrackResult("queued", delivery.event)  # what track_lead must answer

    async def work() -> None:
        while True:
            if not queue:
                if not done[1]:
                    idle.set()
                ready.clear()
                await ready.wait()
                continue
            delivery = queue.popleft()
            done[1] += 1
            request, event_id = delivery.request(), delivery.event.event_id
            response = await engine.request(
                request.method, request.target, request.body(), idempotency_key=event_id
            )
            DUB.outcome(delivery.event, parse_json(response.body))
            done[0] += 1
            done[1] -= 1

    async def burst(count: int) -> None:
        for i in range(count):
            track_lead(event_name="Sign up", customer_external_id=f"u{i}")
        await asyncio.sleep(0)
        await idle.wait()

    workers = [asyncio.ensure_future(work()) for _ in range(c)]
    try:
        await burst(100)
        cpu = time.process_time()
        await burst(n)
        cpu = time.process_time() - cpu
        if done[0] != n + 100:
            raise RuntimeError(f"{done[0]} of {n + 100} delivered")
        return cpu / n
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await engine.aclose()


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
        delivery, _ = build_event(DUB, "lead", fields, "customer_external_id", click_id=CLICK_ID)
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
