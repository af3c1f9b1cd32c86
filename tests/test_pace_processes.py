"""Two ``asgi-attribution outbox deliver`` processes on one API key share its budget: each reads
what the provider says remains, so together they stay within the rate limit (issue 28).

One outbox (a SQLite file, a Redis), one fake provider with a small sliding window on a real
socket, two CLI processes draining a backlog of three windows' worth. Counted: events sent,
delivered, duplicated, reported (dead letters, which the CLI names and exits 1 for) and
silently lost (must be 0), and the 429s met (few: the two processes race for some slots;
generous bounds, the machine is shared).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_attribution import Tracker
from asgi_attribution.testing import FakeProvider, serve_in_thread

from .outbox.servers import RedisServer

LIMIT, WINDOW = 10, 2.0
EVENTS = 3 * LIMIT


async def fill(outbox: str, key: str, url: str) -> list[str]:
    ids = []
    async with Tracker("dub", api_key=key, base_url=url, outbox=outbox, deliver=False) as t:
        for i in range(EVENTS):
            result = await t.track_lead(
                click_id="c", event_name="Sign up", customer_external_id=f"p{i}"
            )
            ids.append(result.event_id or "")
    return ids


def deliver(store: list[str], key: str, url: str) -> subprocess.Popen[str]:
    options = ["--api-key", key, "--base-url", url, "--rate-limit-share", "1.0", "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-m", "asgi_attribution", "outbox", "deliver", *store, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(params=["sqlite", "redis"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """One outbox and the CLI options naming it."""
    if request.param == "sqlite":
        path = str(tmp_path / "events.db")
        yield path, ["--path", path]
        return
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes")
    try:
        yield server.url, ["--redis-url", server.url]
    finally:
        server.stop()


def test_two_deliver_processes_on_one_key_stay_within_its_budget(
    outbox: tuple[str, list[str]],
) -> None:
    outbox_url, store = outbox
    provider = FakeProvider("dub", rate_limit=f"{LIMIT}/{WINDOW:g}s")
    key = f"dub_procs_{uuid.uuid4().hex[:12]}"
    with serve_in_thread(provider) as url:
        ids = asyncio.run(fill(outbox_url, key, url))
        workers = [deliver(store, key, url) for _ in range(2)]
        outputs = [w.communicate(timeout=240) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    status = subprocess.run(
        [sys.executable, "-m", "asgi_attribution", "outbox", "status", *store, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    counts = json.loads(status.stdout)
    sent = len(ids)
    counted = Counter(r.idempotency_key for r in provider.accepted)
    delivered = set(counted) & set(ids)
    duplicates = sum(n - 1 for n in counted.values())
    reported = counts["dead"]  # named by the CLI (list --dead), never silently dropped
    lost = sent - len(delivered) - reported
    assert (len(delivered), duplicates, reported, lost) == (sent, 0, 0, 0)
    assert counts["delivered"] == sent and counts["pending"] == counts["inflight"] == 0
    limiter = provider.limiter
    assert limiter is not None
    requests = limiter.taken + limiter.rejected
    # Within the budget together: the 429s are the odd slot both raced for, not a storm
    # (measured: 2 of 32 requests; each process sending its first burst at concurrency 10
    # before any answer stated the budget, 22 of 52).
    assert limiter.rejected <= 0.2 * requests, (limiter.rejected, requests)
    assert max(limiter.peak_used.values()) <= LIMIT
