"""A real worker process on the PostgreSQL outbox, started (and killed) by the outbox tests.

Delivers until the table has nothing left, then prints ``DONE <stats>``. With ``--track N`` it
first appends N leads (printing ``TRACKED <ids>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from asgi_attribution import OutboxTransport, RetryPolicy, Tracker
from asgi_attribution.transports.outbox._postgres import PostgresOutbox

KEY = "dub_test_key"
FAST = RetryPolicy(initial_backoff=0.05, max_backoff=0.2, max_retry_after=0.5, max_elapsed=60)


async def main(args: argparse.Namespace) -> None:
    store = PostgresOutbox(args.url, table=args.table, worker=args.worker, notify_wait=0.2)
    transport = OutboxTransport(
        store,
        api_key=KEY,
        base_url=args.base_url,
        retry=FAST,
        concurrency=args.concurrency,
        lease=args.lease,
        poll_interval=0.05,
    )
    async with Tracker("dub", transport=transport) as tracker:
        if args.track:
            results = await asyncio.gather(
                *(
                    tracker.track_lead(
                        click_id="clk",
                        event_name="Sign up",
                        customer_external_id=f"{args.worker}{i}",
                    )
                    for i in range(args.track)
                )
            )
            print("TRACKED", json.dumps([r.event_id for r in results]), flush=True)
        print("STARTED", flush=True)
        await tracker.flush()
        print("DONE", json.dumps(tracker.stats.as_dict()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--track", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=float, default=2.0)
    asyncio.run(main(parser.parse_args()))
