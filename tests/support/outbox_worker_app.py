"""A real process using the outbox, started (and killed) by the outbox tests.

It tracks ``--track`` leads through a Tracker whose transport is an OutboxTransport, prints
``TRACKED <json list of event ids>`` once they are all stored, then (unless ``--append-only``)
delivers until the store has nothing left and prints ``DONE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from asgi_attribution import OutboxTransport, RedisOutbox, RetryPolicy, SQLiteOutbox, Tracker
from asgi_attribution.transports.outbox import OutboxStore

KEY = "dub_test_key"
FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, max_retry_after=0.5, max_elapsed=60)


async def main(args: argparse.Namespace) -> None:
    if args.wait_for:  # a start line, so that several processes append at the same moment
        while not Path(args.wait_for).exists():
            await asyncio.sleep(0.005)
    store: OutboxStore
    if args.store.startswith("redis://"):
        store = RedisOutbox(args.store, prefix=args.prefix, consumer=args.consumer)
    else:
        store = SQLiteOutbox(args.store)
    transport = OutboxTransport(
        store,
        deliver=not args.append_only,
        api_key=KEY,
        base_url=args.base_url,
        retry=FAST,
        concurrency=args.concurrency,
        lease=args.lease,
        poll_interval=0.1,
    )
    async with Tracker("dub", transport=transport) as tracker:
        results = await asyncio.gather(
            *(
                tracker.track_lead(
                    click_id="clk", event_name="Sign up", customer_external_id=f"{args.users}{i}"
                )
                for i in range(args.track)
            )
        )
        assert all(r.accepted and r.durable for r in results)
        print("TRACKED", json.dumps([r.event_id for r in results]), flush=True)
        if not args.append_only:
            await tracker.flush()
            print("DONE", json.dumps(tracker.stats.as_dict()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True, help="SQLite path or redis:// URL")
    parser.add_argument("--prefix", default="asgi-attribution:outbox")
    parser.add_argument("--consumer")
    parser.add_argument("--base-url", default="http://127.0.0.1:9")
    parser.add_argument("--track", type=int, default=0)
    parser.add_argument("--users", default="user_")
    parser.add_argument("--append-only", action="store_true")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--wait-for")
    started = time.monotonic()
    asyncio.run(main(parser.parse_args()))
    print(f"EXIT pid={os.getpid()} after {time.monotonic() - started:.1f}s", file=sys.stderr)
