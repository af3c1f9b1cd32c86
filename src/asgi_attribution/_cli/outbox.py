"""``asgi-attribution outbox ...``: inspect and operate a durable outbox from a shell or a cron job.

Commands: ``status``, ``list [--state STATE]``, ``retry``, ``purge --delivered --older-than 7d``
and ``deliver`` (``--follow`` to run as a long-lived worker). Select the store with
``--path FILE`` (SQLite) or ``--redis-url URL`` (``ASGI_ATTRIBUTION_OUTBOX`` in the environment
works too). Exit codes: 0 ok, 1 failures (dead letters, undelivered events, unknown event ids),
2 usage error or unusable store; an error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from ..transports import OutboxError, OutboxStore, RedisOutbox, RetryPolicy, SQLiteOutbox
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    UsageError,
    error_line,
    exit_codes,
    positive_float,
    positive_int,
    wrap,
)
from .outbox_deliver import KEY_VARIABLES, deliver, missing_key
from .outbox_list import LISTABLE, list_rows

__all__ = ["PROG", "main", "parse_duration", "positive_duration"]

PROG = "asgi-attribution outbox"
_DEFAULTS = RetryPolicy()
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FAILED = "some events failed: dead letters, events left undelivered, unknown event ids"
DESCRIPTION = wrap(
    "Inspect and operate a durable outbox. Select the store with --path FILE (SQLite) or "
    "--redis-url URL (redis://, rediss:// or unix://); ASGI_ATTRIBUTION_OUTBOX in the "
    "environment works too. The CLI never creates an outbox: a wrong path is an error.",
    "Run asgi-attribution outbox COMMAND --help for the options of each.",
)


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"45s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``.

    Example:
        >>> parse_duration("7d"), parse_duration("1.5h"), parse_duration("90")
        (604800.0, 5400.0, 90.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def positive_duration(text: str) -> float:
    """A duration (see :func:`parse_duration`) above zero.

    Example:
        >>> positive_duration("30s")
        30.0
    """
    seconds = parse_duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return seconds


def _build_parser() -> CommandParser:
    store = CommandParser(add_help=False)
    where = store.add_argument_group("store (one of)")
    where.add_argument("--path", help="SQLite outbox file")
    where.add_argument("--redis-url", help="Redis URL (redis://, rediss:// or unix://)")
    where.add_argument(
        "--redis-prefix",
        default="asgi-attribution:outbox",
        help="key prefix of the Redis outbox (default: %(default)s)",
    )
    parser = CommandParser(prog=PROG, description=DESCRIPTION, epilog=exit_codes(_FAILED))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, summary: str, failed: str = "some events failed", description: Sequence[str] = ()
    ) -> CommandParser:
        sub: CommandParser = commands.add_parser(
            name,
            parents=[store],
            help=summary,
            description=wrap(*(description or [summary[0].upper() + summary[1:] + "."])),
            epilog=exit_codes(failed),
        )
        return sub

    status = command(
        "status",
        "counts by state and the oldest pending event's age",
        failed="the outbox holds dead letters",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    states = ", ".join(LISTABLE)
    listing = command(
        "list",
        "list undelivered events: pending, in flight, dead letters",
        description=[
            f"List undelivered events, oldest first. States: {states}; all is every one of "
            "them (delivered events are not listed).",
            "--json prints JSON Lines: one JSON object per event and line (event_id, state, "
            "provider, kind, attempts, last_error, created_at, updated_at, next_attempt_at, "
            "event).",
        ],
        failed="not used by list",
    )
    which = listing.add_mutually_exclusive_group()
    which.add_argument(
        "--state",
        choices=[*LISTABLE, "all"],
        default="all",
        help="the events in this state (default: all)",
    )
    which.add_argument(
        "--dead", dest="state", action="store_const", const="dead", help="same as --state dead"
    )
    listing.add_argument("--limit", type=positive_int, default=100, help="at most N (default: 100)")
    listing.add_argument("--json", action="store_true", help="print JSON Lines (one per event)")
    retry = command(
        "retry",
        "dead letters back to pending, with a fresh budget",
        failed="some EVENT_IDs are not dead letters in this outbox (named on stderr)",
    )
    retry.add_argument("event_ids", nargs="*", metavar="EVENT_ID", help="only these (default: all)")
    purge = command("purge", "delete old delivered events")
    purge.add_argument("--delivered", action="store_true", required=True, help="delivered ones")
    purge.add_argument(
        "--older-than", type=parse_duration, required=True, help="age, e.g. 7d, 12h, 30m"
    )
    _deliver_options(
        command(
            "deliver",
            "deliver pending events now (--follow: keep running)",
            failed="events became dead letters, or (without --follow) some were left undelivered",
            description=[
                "Deliver pending events now; with --follow, keep running as a worker until "
                "SIGINT/SIGTERM (in-flight claims are given back, nothing is lost).",
                "Each event goes to its own provider with --api-key, else with that "
                f"provider's key from the environment ({', '.join(KEY_VARIABLES)}). With no "
                "key at all, deliver stops before touching the store (exit code 2).",
            ],
        )
    )
    return parser


def _deliver_options(deliver: CommandParser) -> None:
    deliver.add_argument("--follow", action="store_true", help="run as a worker until stopped")
    deliver.add_argument(
        "--api-key", help="provider API key (default: DUB_API_KEY / PIMMS_API_KEY per event)"
    )
    deliver.add_argument("--base-url", help="provider API base URL (e.g. a staging fake)")
    deliver.add_argument(
        "--concurrency", type=positive_int, default=10, help="deliveries at once (default: 10)"
    )
    deliver.add_argument(
        "--timeout", type=positive_float, default=10.0, help="seconds per HTTP attempt"
    )
    deliver.add_argument(
        "--lease", type=positive_duration, default=60.0, help="claim lease (default: 60s)"
    )
    deliver.add_argument(
        "--max-attempts",
        type=positive_int,
        default=_DEFAULTS.max_attempts,
        help="attempts per event",
    )
    deliver.add_argument(
        "--max-elapsed",
        type=parse_duration,
        default=_DEFAULTS.max_elapsed,
        help="time budget per event from its first attempt (default: 10m)",
    )
    deliver.add_argument(
        "--initial-backoff",
        type=float,
        default=_DEFAULTS.initial_backoff,
        help="first retry delay in seconds",
    )
    deliver.add_argument(
        "--max-backoff", type=float, default=_DEFAULTS.max_backoff, help="retry delay cap"
    )
    deliver.add_argument(
        "--deadline", type=parse_duration, help="stop after this long; what is left stays stored"
    )
    progress = deliver.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="progress bar"
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false")


def _store(args: argparse.Namespace) -> OutboxStore:
    path, url = args.path, args.redis_url
    if path is None and url is None:
        env = os.environ.get("ASGI_ATTRIBUTION_OUTBOX")
        if env and env.startswith(RedisOutbox.option_prefixes):
            url = env
        else:
            path = env
    if (path is None) == (url is None):
        raise UsageError("give exactly one of --path FILE or --redis-url URL")
    if url is not None:
        if not url.startswith(RedisOutbox.option_prefixes):
            scheme = url.partition(":")[0] if ":" in url else "none"
            raise UsageError(
                f"--redis-url is not a Redis URL (scheme {scheme!r}): use redis://HOST:PORT/DB, "
                "rediss://... or unix://PATH"
            )
        try:
            urlsplit(url).port  # noqa: B018 (a port that is not a number raises ValueError)
            return RedisOutbox(url, prefix=args.redis_prefix)
        except ValueError as exc:
            raise UsageError(f"--redis-url is not a usable Redis URL: {exc}") from None
    if not path:
        raise UsageError("--path is empty: give the outbox file")
    # create=False: a typo in the path is an error, not a fresh empty outbox.
    return SQLiteOutbox(path, create=False)


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
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    try:
        store = _store(args)
        if args.command == "deliver":
            problem = missing_key(args.api_key)
            if problem is not None:  # before the store is touched: no file, no connection
                raise UsageError(problem)
            if args.base_url is not None and not args.base_url.startswith(("http://", "https://")):
                raise UsageError(f"--base-url {args.base_url!r} is not an http(s) URL")
        return asyncio.run(_run(args, store))
    except (UsageError, OutboxError) as exc:
        print(error_line(PROG, exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace, store: OutboxStore) -> int:
    if args.command == "deliver":
        return await deliver(args, store)
    if args.command == "list":
        return await list_rows(store, args.state, args.limit, as_json=args.json)
    async with store:
        if args.command == "status":
            return await _status(args, store)
        if args.command == "retry":
            return await _retry(store, args.event_ids)
        removed = await store.purge_delivered(args.older_than)
        print(f"{removed} delivered events purged")
        return EXIT_OK


async def _retry(store: OutboxStore, event_ids: Sequence[str]) -> int:
    if not event_ids:
        moved = await store.retry_dead(None)
        print(f"{moved} dead letters back to pending")
        return EXIT_OK
    moved, unknown = 0, []
    for event_id in dict.fromkeys(event_ids):  # one at a time: each answer says if it was dead
        found = await store.retry_dead([event_id])
        moved += found
        if not found:
            unknown.append(event_id)
    print(f"{moved} dead letters back to pending")
    if unknown:
        message = f"unknown event ids (not dead letters here): {', '.join(unknown)}"
        print(error_line(PROG, message), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


async def _status(args: argparse.Namespace, store: OutboxStore) -> int:
    status = await store.status()
    if args.json:
        print(json.dumps({**status.counts, "oldest_pending_age": status.oldest_pending_age}))
    else:
        counts = "  ".join(f"{state} {n}" for state, n in status.counts.items())
        print(f"{counts}  oldest pending {_age(status.oldest_pending_age)}")
    return EXIT_FAILED if status.counts.get("dead", 0) else EXIT_OK
