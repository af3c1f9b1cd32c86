"""``asgi-attribution outbox ...``: inspect and operate a durable outbox from a shell or a cron job.

Commands: ``status``, ``list [--state STATE | --dead | --not-recorded]``, ``retry [--force]``,
``purge --delivered --older-than 7d [--vacuum]``, ``deliver`` (``--follow`` to run as a
long-lived worker) and ``init`` (create a PostgreSQL outbox table). Select the store with
``--path FILE`` (SQLite), ``--redis-url URL`` or ``--postgres-url URL``
(``ASGI_ATTRIBUTION_OUTBOX`` in the environment works too). Exit codes: 0 ok, 1 failures (dead
letters, undelivered events, unknown event ids, refused retries, problems with the store), 2
usage error or unusable store; an error is one line on stderr, never a traceback, never a
password.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..transports import OutboxError, OutboxStore
from .common import EXIT_OK, EXIT_USAGE, UsageError, error_line
from .outbox_admin import init, purge, retry, status
from .outbox_deliver import deliver, missing_key
from .outbox_list import list_rows
from .outbox_parser import PROG, build_parser, parse_duration, positive_duration
from .outbox_store import build_store, choose, redact, vacuum_problem

__all__ = ["PROG", "main", "parse_duration", "positive_duration"]


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
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
