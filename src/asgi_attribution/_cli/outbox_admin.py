"""``outbox status``, ``retry``, ``purge`` and ``init``: reading and operating an outbox.

``status`` prints the problems the store reports about itself (exit 1 when there are any);
``retry`` names the dead letters a retry cannot help (``click_not_found``) and leaves them
dead unless ``--force``; ``purge --vacuum`` shrinks a SQLite file after purging.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from ..transports import OutboxRow, OutboxStore
from ..transports.outbox.postgres import init_schema
from ..transports.outbox.store import refused_retry
from .common import EXIT_FAILED, EXIT_OK, error_line

__all__ = ["age", "init", "purge", "refusal", "retry", "status"]


def age(seconds: float | None) -> str:
    """An age for a person: ``"-"``, ``"12.0s"``, ``"3.5m"``, ``"2.0h"``, ``"1.5d"``.

    Example:
        >>> age(None), age(12), age(210), age(129600)
        ('-', '12.0s', '3.5m', '1.5d')
    """
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


async def status(store: OutboxStore, *, as_json: bool) -> int:
    """Counts, the oldest pending age, and one line per problem; 1 for dead letters or problems.

    Example:
        >>> import asyncio, os, tempfile
        >>> from asgi_attribution.transports import SQLiteOutbox
        >>> store = SQLiteOutbox(os.path.join(tempfile.mkdtemp(), "events.db"))
        >>> async def show():
        ...     async with store:
        ...         return await status(store, as_json=True)
        >>> asyncio.run(show())  # doctest: +NORMALIZE_WHITESPACE
        {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0, "oldest_pending_age": null,
         "problems": []}
        0
    """
    found = await store.status()
    problems = list(found.problems)
    if as_json:
        data = {
            **found.counts,
            "oldest_pending_age": found.oldest_pending_age,
            "problems": problems,
        }
        print(json.dumps(data))
    else:
        counts = "  ".join(f"{state} {n}" for state, n in found.counts.items())
        print(f"{counts}  oldest pending {age(found.oldest_pending_age)}")
        for problem in problems:
            print(f"problem: {' '.join(problem.split())}")
    return EXIT_FAILED if found.counts.get("dead", 0) or problems else EXIT_OK


def refusal(rows: Sequence[OutboxRow]) -> str | None:
    """The one line that says why these dead letters were not retried (None if none were).

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {}, state="dead", error_code="click_not_found")
        >>> print(refusal([row]))  # doctest: +ELLIPSIS
        not retried: evt_1 (click_not_found): the provider ... 7 days: ... --force to retry anyway
    """
    refused = [(row, refused_retry(row)) for row in rows]
    named = [(row, why) for row, why in refused if why]
    if not named:
        return None
    ids = ", ".join(f"{row.event_id} ({row.error_code})" for row, _ in named)
    why = str(named[0][1]).split(" (force")[0]
    return f"not retried: {ids}: {why}; pass --force to retry anyway"


async def _dead_rows(store: OutboxStore) -> list[OutboxRow]:
    count = (await store.status()).counts.get("dead", 0)
    return await store.list_dead(count) if count else []


async def retry(store: OutboxStore, event_ids: Sequence[str], prog: str, *, force: bool) -> int:
    """Dead letters back to pending; exit 1 naming unknown ids and refused retries."""
    unknown: list[str] = []
    if not event_ids:
        moved = await store.retry_dead(None, force=force)
    else:
        moved = 0
        for event_id in dict.fromkeys(event_ids):  # one at a time: each answer says if it was
            found = await store.retry_dead([event_id], force=force)
            moved += found
            if not found:
                unknown.append(event_id)
    kept: list[OutboxRow] = []
    if not force and (unknown or not event_ids):
        dead = await _dead_rows(store)
        wanted = set(unknown) if event_ids else {row.event_id for row in dead}
        kept = [row for row in dead if row.event_id in wanted and refused_retry(row)]
    print(f"{moved} dead letters back to pending")
    failed = False
    refused = refusal(kept)
    if refused is not None:
        print(error_line(prog, refused), file=sys.stderr)
        failed = True
    kept_ids = {row.event_id for row in kept}
    unknown = [event_id for event_id in unknown if event_id not in kept_ids]
    if unknown:
        message = f"unknown event ids (not dead letters here): {', '.join(unknown)}"
        print(error_line(prog, message), file=sys.stderr)
        failed = True
    return EXIT_FAILED if failed else EXIT_OK


async def purge(store: OutboxStore, older_than: float, *, vacuum: bool) -> int:
    """Delete delivered rows older than ``older_than`` seconds; then ``VACUUM`` if asked."""
    removed = await store.purge_delivered(older_than)
    print(f"{removed} delivered events purged")
    if vacuum:
        await store.vacuum()
        print(f"{store.description} vacuumed")
    return EXIT_OK


async def init(url: str, table: str, description: str) -> int:
    """Create or upgrade the PostgreSQL outbox table; print its schema version."""
    version = await init_schema(url, table)
    where = description.rsplit(" (", 1)[0]  # the URL without its password
    print(f"outbox table {table} at {where}: schema version {version}")
    return EXIT_OK
