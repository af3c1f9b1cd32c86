"""``asgi-attribution outbox ...``: inspect and operate a durable outbox from a shell or a cron job.

Commands: ``status``, ``list --dead``, ``retry``, ``purge --delivered --older-than 7d`` and
``deliver`` (``--follow`` to run as a long-lived worker). Select the store with ``--path FILE``
(SQLite) or ``--redis-url URL`` (``ASGI_ATTRIBUTION_OUTBOX`` in the environment works too).

Exit codes a script can rely on:

- ``0``: done; nothing failed (``status``: no dead letters).
- ``1``: some events failed: ``deliver`` left dead letters or undelivered events behind,
  ``status`` found dead letters.
- ``2``: usage error, or the store cannot be used (wrong path, corrupt file, no server);
  the message is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from ..transports import (
    OutboxError,
    OutboxStore,
    OutboxTransport,
    RedisOutbox,
    RetryPolicy,
    SQLiteOutbox,
)

__all__ = ["main", "parse_duration"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_DEFAULTS = RetryPolicy()
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


def _build_parser() -> argparse.ArgumentParser:
    store = argparse.ArgumentParser(add_help=False)
    where = store.add_argument_group("store (one of)")
    where.add_argument("--path", help="SQLite outbox file")
    where.add_argument("--redis-url", help="Redis URL of a Redis Streams outbox")
    where.add_argument(
        "--redis-prefix",
        default="asgi-attribution:outbox",
        help="key prefix of the Redis outbox (default: %(default)s)",
    )
    parser = argparse.ArgumentParser(
        prog="asgi-attribution outbox",
        description="Inspect and operate a durable outbox.",
        epilog="Exit codes: 0 ok; 1 some events failed or are dead letters; 2 usage error or "
        "unusable store.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status", parents=[store], help="counts by state and the oldest pending event's age"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    listing = commands.add_parser("list", parents=[store], help="list dead letters")
    listing.add_argument("--dead", action="store_true", required=True, help="list dead letters")
    listing.add_argument("--limit", type=int, default=100, help="at most N (default: 100)")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    retry = commands.add_parser("retry", parents=[store], help="dead letters back to pending")
    retry.add_argument("event_ids", nargs="*", metavar="EVENT_ID", help="only these (default: all)")
    purge = commands.add_parser("purge", parents=[store], help="delete old delivered events")
    purge.add_argument("--delivered", action="store_true", required=True, help="delivered ones")
    purge.add_argument(
        "--older-than", type=parse_duration, required=True, help="age, e.g. 7d, 12h, 30m"
    )
    deliver = commands.add_parser(
        "deliver", parents=[store], help="deliver pending events now (--follow: keep running)"
    )
    deliver.add_argument("--follow", action="store_true", help="run as a worker until stopped")
    deliver.add_argument(
        "--api-key", help="provider API key (default: DUB_API_KEY / PIMMS_API_KEY per event)"
    )
    deliver.add_argument("--base-url", help="provider API base URL (e.g. a staging fake)")
    deliver.add_argument("--concurrency", type=int, default=10, help="deliveries at once")
    deliver.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP attempt")
    deliver.add_argument(
        "--lease", type=parse_duration, default=60.0, help="claim lease (default: 60s)"
    )
    deliver.add_argument(
        "--max-attempts", type=int, default=_DEFAULTS.max_attempts, help="attempts per event"
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
    return parser


def _store(args: argparse.Namespace) -> OutboxStore:
    path, url = args.path, args.redis_url
    if path is None and url is None:
        env = os.environ.get("ASGI_ATTRIBUTION_OUTBOX")
        if env and env.startswith(("redis://", "rediss://", "unix://")):
            url = env
        else:
            path = env
    if (path is None) == (url is None):
        raise _UsageError("give exactly one of --path FILE or --redis-url URL")
    if url is not None:
        return RedisOutbox(url, prefix=args.redis_prefix)
    # create=False: a typo in the path is an error, not a fresh empty outbox.
    return SQLiteOutbox(path, create=False)


class _UsageError(Exception):
    pass


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
        return asyncio.run(_run(args, store))
    except _UsageError as exc:
        print(f"asgi-attribution outbox: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OutboxError as exc:
        print(f"asgi-attribution outbox: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace, store: OutboxStore) -> int:
    if args.command == "deliver":
        return await _deliver(args, store)
    async with store:
        if args.command == "status":
            return await _status(args, store)
        if args.command == "list":
            return await _list(args, store)
        if args.command == "retry":
            moved = await store.retry_dead(args.event_ids or None)
            print(f"{moved} dead letters back to pending")
            return EXIT_OK
        removed = await store.purge_delivered(args.older_than)
        print(f"{removed} delivered events purged")
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


async def _list(args: argparse.Namespace, store: OutboxStore) -> int:
    for row in await store.list_dead(args.limit):
        if args.json:
            data = {
                "event_id": row.event_id,
                "provider": row.provider,
                "kind": row.kind,
                "attempts": row.attempts,
                "last_error": row.last_error,
                "created_at": row.created_at,
                "event": row.event,
            }
            print(json.dumps(data))
        else:
            print(f"{row.event_id}  {row.provider} {row.kind}  {row.last_error}")
    return EXIT_OK


class _Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0

    def update(self, done: int, dead: int, left: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        # Progress is what left the store; counting done + left would count twice an event that
        # was delivered but not yet marked so. New appends meanwhile grow the total.
        self.total = max(self.total, left)
        width = 30
        filled = int(width * (self.total - left) / self.total)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {done} delivered, {dead} dead, {left} left ")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


async def _deliver(args: argparse.Namespace, store: OutboxStore) -> int:
    if args.concurrency < 1 or args.max_attempts < 1:
        raise _UsageError("--concurrency and --max-attempts must be at least 1")
    retry = RetryPolicy(
        max_attempts=args.max_attempts,
        max_elapsed=args.max_elapsed,
        initial_backoff=args.initial_backoff,
        max_backoff=args.max_backoff,
    )
    transport = OutboxTransport(
        store,
        api_key=args.api_key,
        base_url=args.base_url,
        timeout=args.timeout,
        retry=retry,
        concurrency=args.concurrency,
        lease=args.lease,
        poll_interval=0.2 if not args.follow else 1.0,
        shutdown_timeout=0,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # A worker stops cleanly: in-flight claims are given back, nothing is lost.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    await transport.start()
    try:
        total = await store.unfinished()
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = _Progress(total, sys.stderr, enabled=bool(show) and not args.follow)
        deadline = None if args.deadline is None else time.monotonic() + args.deadline
        while not stop.is_set():
            left = await store.unfinished()
            stats = transport.stats
            progress.update(stats.sent, stats.failed, left)
            if left == 0 and not args.follow:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        progress.update(transport.stats.sent, transport.stats.failed, left, force=True)
        progress.finish()
    finally:
        await transport.aclose()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
    stats = transport.stats
    left = transport.left_in_store
    summary = f"{stats.sent} delivered, {stats.failed} dead, {stats.retried} retried"
    print(summary + (f", {left} left in the outbox" if left else ""), file=sys.stderr)
    # A stopped --follow worker leaves scheduled retries behind by design; only dead letters fail.
    unfinished = bool(left) and not args.follow
    return EXIT_FAILED if stats.failed or unfinished else EXIT_OK
