"""Instructions per event, counted by valgrind: the steady measure behind each cut of issue 16.

CPU time on this 2-core machine moves 20-40% between runs of the same code; valgrind's count of
the instructions a process runs does not move by 1%. Each scenario runs twice in a child
process, with N and 3N events, and the difference divided by 2N is what one more event costs
(start-up and imports cancel out). User-space instructions only: the kernel's share of a
socket write or a WAL commit is not in it, so these are not the bench's CPU-time ratios.

    .venv/bin/python -m bench.instructions                 # every scenario
    .venv/bin/python -m bench.instructions whole whole-tls # some

Needs valgrind (``apt-get install valgrind``) and, for the delivery scenarios, nginx and openssl.
Not part of ``bench/run.sh``: each scenario takes 15-60 s under valgrind.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

CLICK_ID = "cm3kf8x2a0001bench9yz7q"
SCENARIOS = ("floor", "whole", "floor-tls", "whole-tls", "queue", "outbox")


async def _track(tracker: Any, n: int, pause: bool = False) -> None:
    for i in range(n):
        await tracker.track_lead(
            click_id=CLICK_ID, event_name="Sign up", customer_external_id=f"u{i}"
        )
        if pause:
            await asyncio.sleep(0)
    await tracker.flush()


async def _queue(n: int) -> None:
    """track_lead -> background queue -> an attempt answered at once (no network)."""
    from asgi_attribution import Tracker
    from asgi_attribution.transports import _http as answers
    from asgi_attribution.transports._background import BackgroundTransport
    from asgi_attribution.transports._base import Transport

    body = {"click": {"id": "c"}, "link": {"id": "link_1"}, "customer": {"externalId": "u"}}

    class Answered(Transport):
        async def attempt(self, delivery: Any) -> Any:
            return answers.delivered(delivery, answers.Answer(200, body, "OK", "POST /"))

    async with Tracker("dub", transport=BackgroundTransport(Answered(), concurrency=10)) as t:
        await _track(t, n)


async def _outbox(n: int) -> None:
    """Sequential track_lead to the SQLite outbox (append only), as bench/outbox.py."""
    from asgi_attribution import Tracker

    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker("dub", api_key="k", outbox=f"{tmp}/o.db", deliver=False)
        async with tracker:
            await _track(tracker, n, pause=True)


def _child(name: str, n: int) -> None:
    if name in ("queue", "outbox"):
        asyncio.run((_queue if name == "queue" else _outbox)(n))
        return
    from . import delivery
    from .nginx import nginx

    tls = name.endswith("-tls")
    with nginx() as server:
        assert server is not None, "nginx or openssl is missing"
        os.environ["SSL_CERT_FILE"] = server.ca_file
        url = server.tls_url if tls else server.plain_url
        ctx = delivery._context(server, tls)
        run: dict[str, Callable[..., Coroutine[Any, Any, float]]] = {
            "floor": delivery._floor_awaited,
            "whole": delivery._path,
        }
        asyncio.run(run[name.removesuffix("-tls")](url, ctx, 10, n))


def count(name: str, n: int = 1000) -> int:
    """Instructions per event of scenario ``name`` (from ``n`` and ``3 n`` events)."""
    totals = []
    for events in (n, 3 * n):
        done = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             sys.executable, "-m", "bench.instructions", "--child", name, str(events)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        assert found, done.stderr[-2000:]
        totals.append(int(found.group(1).replace(",", "")))
    return (totals[1] - totals[0]) // (2 * n)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is missing: apt-get install valgrind")
    for name in argv or SCENARIOS:
        print(f"{name:10s} {count(name):>9,} instructions per event", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
