"""PostgreSQL outbox cost: appends in their own commit, and inside the user's own transaction.

Rows for bench/outbox.py's table (same keys: ``events_per_s``, ``median_us``, ``p99_us``,
``durable``), measured on a throwaway cluster (``scripts/test-postgres``, or the server named by
``ASGI_ATTRIBUTION_TEST_POSTGRES_URL``):

- "PostgreSQL outbox": ``track_lead`` through an append-only tracker, each append its own commit
  (concurrent ones share one), as the SQLite and Redis rows are measured;
- "PostgreSQL append_within (in a signup transaction)": the time a signup's transaction
  (``INSERT`` a user, then commit) gains from ``append_within`` in it, i.e. the median of the
  whole transaction with the append minus the median without it, measured alternately;
  ``transaction_us`` gives both medians.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from .common import ROOT, median, percentile

URL_ENV = "ASGI_ATTRIBUTION_TEST_POSTGRES_URL"


@contextlib.contextmanager
def server() -> Iterator[str | None]:
    """The server's URL: the one named in the environment, or a throwaway cluster (or None)."""
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    helper = ROOT / "scripts" / "test-postgres"
    try:
        out = subprocess.run([str(helper), "start"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        yield None
        return
    env = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    try:
        yield env[URL_ENV]
    finally:
        data = env["ASGI_ATTRIBUTION_TEST_POSTGRES_DATA"]
        subprocess.run([str(helper), "stop", data], check=False)


async def _within(url: str, n: int) -> dict[str, Any]:
    import psycopg

    from asgi_attribution import DUB, LeadEvent
    from asgi_attribution.transports._base import Delivery
    from asgi_attribution.transports.outbox import PostgresOutbox, append_within

    table = f"bench_{os.getpid()}"
    store = PostgresOutbox(url, table=f"{table}_outbox")
    with_append: list[float] = []
    alone: list[float] = []
    async with store, await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {table}_users")
        await conn.execute(f"CREATE TABLE {table}_users (id serial PRIMARY KEY, email text)")
        try:
            for i in range(n + 50):
                for append in (True, False):
                    t0 = time.perf_counter_ns()
                    async with conn.transaction():
                        await conn.execute(
                            f"INSERT INTO {table}_users (email) VALUES (%s)", (f"u{i}",)
                        )
                        if append:
                            lead = LeadEvent(
                                click_id="c", event_name="Sign up", customer_external_id=f"u{i}"
                            )
                            await append_within(store, Delivery(lead, DUB), conn)
                    if i >= 50:  # after the warm-up
                        (with_append if append else alone).append(
                            (time.perf_counter_ns() - t0) / 1000
                        )
        finally:
            await conn.execute(f"DROP TABLE {table}_users")
            await conn.execute(f"DROP TABLE {store.tables.table}")
    added = [a - b for a, b in zip(with_append, alone, strict=True)]
    return {
        "events_per_s": round(1e6 / median(with_append)),
        "median_us": round(median(added), 1),
        "p99_us": round(percentile(added, 99), 1),
        "durable": True,  # with your commit
        "transaction_us": {
            "alone_median": round(median(alone), 1),
            "with_append_within_median": round(median(with_append), 1),
        },
    }


def rows(n: int, measure: Any) -> dict[str, Any]:
    """The rows to add to bench/outbox.py's table (``measure``: its ``_measure``)."""
    if importlib.util.find_spec("psycopg") is None:
        return {"PostgreSQL outbox": None}
    from asgi_attribution import Tracker

    with server() as url:
        if url is None:
            return {"PostgreSQL outbox": None}
        from asgi_attribution.transports.outbox import PostgresOutbox

        store = PostgresOutbox(url, table=f"bench_{os.getpid()}_own")
        tracker = Tracker("dub", api_key="k", outbox=store, deliver=False)
        return {
            "PostgreSQL outbox": asyncio.run(measure(tracker, n)),
            "PostgreSQL append_within (in a signup transaction)": asyncio.run(_within(url, n)),
        }


if __name__ == "__main__":
    import json

    from .outbox import _measure

    print(json.dumps(rows(1000, _measure), indent=1))
