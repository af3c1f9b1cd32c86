"""``asgi-attribution outbox ...``: inspect and operate a durable outbox from a shell or a cron job.

Commands: ``status``, ``list [--state STATE | --dead | --not-recorded]``, ``retry [--force]``,
``purge --delivered --older-than 7d [--vacuum]``, ``deliver`` (``--follow`` to run as a
long-lived worker) and ``init`` (create a PostgreSQL outbox table); their options are parsed in
:mod:`.outbox_parser`. ``status`` prints the problems the store reports about itself, and
the id of each row a damaged store cannot read (``list`` too);
``retry`` names the dead letters a retry cannot help (``click_not_found``) and leaves them dead
unless ``--force``; ``purge --vacuum`` shrinks a SQLite file after purging.

Exit codes: 0 ok, 1 failures (dead letters, undelivered events, unknown event ids, refused
retries, problems with the store), 2 usage error or unusable store; an error is one line on
stderr, never a traceback, never a password.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict

from ..transports import OutboxError, OutboxRow, OutboxStore
from ..transports._pace import known_paces
from ..transports.outbox._postgres import init_schema
from ..transports.outbox._store import refused_retry
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, error_line
from .outbox_parser import (
    PROG,
    build_parser,
    build_store,
    choose,
    deliver,
    duration_values,
    list_rows,
    missing_key,
    parse_duration,
    positive_duration,
    redact,
    vacuum_problem,
)

__all__ = [
    "PROG",
    "age",
    "init",
    "main",
    "parse_duration",
    "positive_duration",
    "purge",
    "refusal",
    "retry",
    "status",
]


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

    Then what this process knows of each API key's rate limit (``pace``): the limit, the
    remaining budget and the reset, as the provider's last answer stated them. A ``status``
    run that has sent nothing knows none ("pace: unknown"): the budget is the provider's,
    read from its answers, and a value kept in the store would be stale within the window
    (a minute on Dub) and a write on every delivery; a worker logs the pace as it starts and
    stops holding events back, and the metrics show the waits and 429s.

    Example:
        >>> import asyncio, os, tempfile
        >>> from asgi_attribution.transports import SQLiteOutbox
        >>> store = SQLiteOutbox(os.path.join(tempfile.mkdtemp(), "events.db"))
        >>> async def show():
        ...     async with store:
        ...         return await status(store, as_json=True)
        >>> asyncio.run(show())  # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
        {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0, "oldest_pending_age": null,
         "problems": [], "pace": {...}}
        0
    """
    found = await store.status()
    problems = list(found.problems)
    paces = known_paces()
    if as_json:
        data: dict[str, object] = {
            **found.counts,
            "oldest_pending_age": found.oldest_pending_age,
            "problems": problems,
        }
        if found.unreadable:
            data["unreadable"] = list(found.unreadable)
        data["pace"] = {name: asdict(state) for name, state in paces.items()}
        print(json.dumps(data))
    else:
        counts = "  ".join(f"{state} {n}" for state, n in found.counts.items())
        print(f"{counts}  oldest pending {age(found.oldest_pending_age)}")
        for problem in problems:
            print(f"problem: {' '.join(problem.split())}")
        for name in found.unreadable:  # every one: the operator sends these again
            print(f"unreadable: {name}")
        for name, state in paces.items():
            window = f", window {state.window:g}s" if state.window else ""
            print(
                f"pace: {name}: limit {state.limit}, remaining {state.remaining}, "
                f"reset in {age(max(0.0, state.reset - time.time()))}{window}"
            )
        if not paces:
            print("pace: unknown (no answer yet in this process)")
    failed = found.counts.get("dead", 0) or problems or found.unreadable
    return EXIT_FAILED if failed else EXIT_OK


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


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return error_line(PROG, super().format(record)).replace(": error: ", ": ", 1)


class _Redact(logging.Filter):
    def __init__(self, urls: Sequence[str | None]) -> None:
        super().__init__()
        self.urls = urls

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage(), self.urls), ()
        return True


@contextmanager
def _logs(command: str, urls: Sequence[str | None]) -> Iterator[None]:
    """``deliver`` logs what happens (one line per record on stderr, WARNING and up); the
    other commands report for themselves (``status`` prints the store's problems)."""
    logger = logging.getLogger("asgi_attribution")
    handler: logging.Handler
    if command == "deliver":
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(_OneLine("%(levelname)s: %(message)s"))
        handler.addFilter(_Redact(urls))
    else:
        handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``outbox <command>``; returns the exit code (0 ok, 1 failures, 2 usage/bad store).

    Example:
        >>> import asyncio, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "events.db")
        >>> async def append_one():
        ...     async with Tracker("dub", outbox=path, deliver=False) as tracker:
        ...         await tracker.track_lead(
        ...             click_id="clk", event_name="Sign up", customer_external_id="u1"
        ...         )
        >>> asyncio.run(append_one())
        >>> main(["status", "--path", path])  # doctest: +ELLIPSIS
        pending 1  inflight 0  delivered 0  dead 0  oldest pending ...s
        pace: ...
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(duration_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse has printed its message
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    urls = [args.redis_url, args.postgres_url]
    try:
        with _logs(args.command, urls):
            return _main(args)
    except (UsageError, OutboxError) as exc:
        print(redact(error_line(PROG, exc), urls), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _main(args: argparse.Namespace) -> int:
    if args.command == "init":
        kind, url = choose(args)
        if kind != "postgres":
            raise UsageError(
                "init creates a PostgreSQL outbox table: give --postgres-url URL (SQLite files "
                "and Redis streams are created by the app on first use)"
            )
        store = build_store(args)  # checks the URL and the table name
        return asyncio.run(init(url, args.postgres_table, store.description))
    store = build_store(args, create=args.command == "deliver")
    if args.command == "deliver":
        problem = missing_key(args.api_key)
        if problem is not None:  # before the store is touched: no file, no connection
            raise UsageError(problem)
        if args.base_url is not None and not args.base_url.startswith(("http://", "https://")):
            raise UsageError(f"--base-url {args.base_url!r} is not an http(s) URL")
    if args.command == "purge" and args.vacuum:
        problem = vacuum_problem(store)
        if problem is not None:  # before anything is purged
            raise UsageError(problem)
    return asyncio.run(_run(args, store))


async def _run(args: argparse.Namespace, store: OutboxStore) -> int:
    if args.command == "deliver":
        return await deliver(args, store)
    if args.command == "list":
        return await list_rows(store, args.state, args.limit, as_json=args.json)
    async with store:
        if args.command == "status":
            return await status(store, as_json=args.json)
        if args.command == "retry":
            return await retry(store, args.event_ids, PROG, force=args.force)
        return await purge(store, args.older_than, vacuum=args.vacuum)
