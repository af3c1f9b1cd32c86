"""Durable outbox cost (issue 4): events/s appended, and the handler-visible latency it adds.

Append-only trackers (``Tracker(..., outbox=..., deliver=False)``: the web worker's side, with a
separate deliverer) so only the durable write is timed: a SQLite file in a temporary directory,
and a local ``redis-server`` (started on a free port if installed; its default persistence).
Compared with the in-memory background queue in the same run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import free_port, median, percentile, process

CLICK_ID = "cm3kf8x2a0001bench9yz7q"


def available() -> bool:
    return importlib.util.find_spec("asgi_attribution.transports.outbox") is not None


async def _measure(tracker: Any, n: int) -> dict[str, Any]:
    await tracker.start()
    for i in range(50):  # warm: schema, connections
        await tracker.track_lead(
            click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"w{i}"
        )
    samples = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter_ns()
        result = await tracker.track_lead(
            click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"u{i}"
        )
        samples.append((time.perf_counter_ns() - t0) / 1000)
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    bursts = []
    for b in range(20):  # 50 concurrent signups, durable when the last one returns
        t0 = time.perf_counter_ns()
        await asyncio.gather(
            *(
                tracker.track_lead(
                    click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"b{b}_{i}"
                )
                for i in range(50)
            )
        )
        bursts.append((time.perf_counter_ns() - t0) / 1000)
        await asyncio.sleep(0)
    if result.status != "queued":
        raise RuntimeError(f"track_lead returned {result.status!r}")
    durable = bool(getattr(result, "durable", False))
    await tracker.aclose()
    return {
        "events_per_s": round(n / elapsed),
        "median_us": round(median(samples), 1),
        "p99_us": round(percentile(samples, 99), 1),
        "durable": durable,
        "burst50_median_us": round(median(bursts), 1),
    }


def run(n: int = 3000) -> dict[str, Any]:
    if not available():
        return {"available": False, "note": "not yet available: no outbox transport in the package"}
    from asgi_attribution import Tracker
    from asgi_attribution.transports._background import BackgroundTransport
    from asgi_attribution.transports._base import TrackResult, Transport

    class Discard(Transport):
        async def attempt(self, delivery: Any) -> Any:
            return TrackResult("sent", delivery.event)

    import inspect

    from asgi_attribution.transports.outbox import SQLiteOutbox

    default = inspect.signature(SQLiteOutbox).parameters["synchronous"].default
    out: dict[str, Any] = {"available": True, "events": n, "stores": {}}
    out["sqlite_synchronous"] = str(default).upper()
    memory = Tracker("dub", transport=BackgroundTransport(Discard()))
    out["stores"]["in-memory queue (reference)"] = asyncio.run(_measure(memory, n))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outbox.sqlite3"
        tracker = Tracker("dub", api_key="k", outbox=str(path), deliver=False)
        out["stores"]["SQLite outbox"] = asyncio.run(_measure(tracker, n))
        if shutil.which("redis-server") and importlib.util.find_spec("redis"):
            port = free_port()
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp]
            with process(args, port):
                url = f"redis://127.0.0.1:{port}/0"
                tracker = Tracker("dub", api_key="k", outbox=url, deliver=False)
                out["stores"]["Redis outbox"] = asyncio.run(_measure(tracker, n))
        else:
            out["stores"]["Redis outbox"] = None
    out["stores"].update(importlib.import_module(".outbox_postgres", __package__).rows(n, _measure))
    ref = out["stores"]["in-memory queue (reference)"]["median_us"]
    for row in out["stores"].values():
        if row:
            row["added_us"] = round(row["median_us"] - ref, 1)
    out["note"] = ""
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
