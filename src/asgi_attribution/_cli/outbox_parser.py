"""The options of ``asgi-attribution outbox ...``, and the ``list`` and ``deliver`` commands that
are mostly options.

Which outbox a command works on: ``--path`` (SQLite), ``--redis-url`` or ``--postgres-url`` (or
``ASGI_ATTRIBUTION_OUTBOX``), checked before anything is opened, passwords never echoed; each
command's own options; durations such as ``7d``.

``list`` prints the events of an outbox as text or JSON Lines: undelivered ones by state
(pending, in flight, dead letters), and ``--not-recorded``: delivered events whose provider
answered 2xx without recording them (a duplicate lead, a sale with no customer), with the
outcome and its reason. Rows come from the store's read-only :meth:`OutboxStore.list_rows`; a
store that lists dead letters only makes asking for another state a usage error (exit code 2)
that says ``--state dead`` works. Rows a damaged store cannot read are listed by id after the
others (exit code 1).

``deliver`` delivers what an outbox holds, once or as a worker (``--follow``). The provider of
each event is read from its stored row, so the API keys are checked before the store is
touched: ``--api-key`` for every event, else each provider's environment variable
(``DUB_API_KEY``, ``PIMMS_API_KEY``). When it waits (a crashed worker's claims until their
lease ends, retries not yet due) it says for what and how long.

One concept, though past 800 lines: the outbox's command line as the operator types it (the
store, the options, what each value means); ``list`` and ``deliver`` live here because they are
mostly their options, the other commands in :mod:`.outbox`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

from .._providers import DUB, PIMMS
from ..transports import (
    HTTPTransport,
    OutboxRow,
    OutboxStore,
    OutboxTransport,
    RedisOutbox,
    RetryPolicy,
    SQLiteOutbox,
)
from ..transports.outbox import PostgresOutbox
from ..transports.outbox._store import LIST_STATES, STATES, ListState
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandParser,
    UsageError,
    error_line,
    exit_codes,
    positive_float,
    positive_int,
    wrap,
)

__all__ = [
    "DEFAULT_POSTGRES_TABLE",
    "DEFAULT_REDIS_PREFIX",
    "DURATION_OPTIONS",
    "KEY_VARIABLES",
    "LISTABLE",
    "NOT_RECORDED",
    "ONE_OF",
    "PROG",
    "Progress",
    "build_parser",
    "build_store",
    "choose",
    "deliver",
    "duration_values",
    "list_rows",
    "missing_key",
    "parse_duration",
    "positive_duration",
    "redact",
    "row_json",
    "row_text",
    "vacuum_problem",
]


#: The stores' own defaults, as the command line shows them.
DEFAULT_REDIS_PREFIX: str = inspect.signature(RedisOutbox).parameters["prefix"].default

DEFAULT_POSTGRES_TABLE: str = inspect.signature(PostgresOutbox).parameters["table"].default

ONE_OF = "give exactly one of --path FILE, --redis-url URL or --postgres-url URL"


def redact(text: str, urls: Iterable[str | None]) -> str:
    """``text`` with the password of each of ``urls`` replaced by ``***``.

    Example:
        >>> redact("cannot reach postgresql://app:s3cret@db/app", ["postgresql://app:s3cret@db/app"])
        'cannot reach postgresql://app:***@db/app'
    """
    for url in urls:
        if not url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            text = text.replace(password, "***")
    return text


def choose(args: argparse.Namespace) -> tuple[str, str]:
    """``(kind, value)``: the one store the options (or the environment) name.

    ``kind`` is ``"sqlite"``, ``"redis"`` or ``"postgres"``. Raises :class:`UsageError` when
    none or several are given.

    Example:
        >>> ns = argparse.Namespace(path=None, redis_url=None, postgres_url="postgres://db/app")
        >>> choose(ns)
        ('postgres', 'postgres://db/app')
    """
    given = [
        (kind, value)
        for kind, value in (
            ("sqlite", args.path),
            ("redis", args.redis_url),
            ("postgres", args.postgres_url),
        )
        if value is not None
    ]
    if not given:
        env = os.environ.get("ASGI_ATTRIBUTION_OUTBOX")
        if env and env.startswith(RedisOutbox.option_prefixes):
            given = [("redis", env)]
        elif env and env.startswith(PostgresOutbox.option_prefixes):
            given = [("postgres", env)]
        elif env is not None:
            given = [("sqlite", env)]
    if len(given) != 1:
        raise UsageError(ONE_OF)
    return given[0]


def _scheme(url: str) -> str:
    return url.partition(":")[0] if ":" in url else "none"


# kind: (option, what, URL prefixes, what to use, how a value the store refuses is named)
_SERVERS = {
    "redis": (
        "--redis-url",
        "Redis",
        RedisOutbox.option_prefixes,
        "redis://HOST:PORT/DB, rediss://... or unix://PATH",
        "--redis-url is not a usable Redis URL: ",
    ),
    "postgres": (
        "--postgres-url",
        "PostgreSQL",
        PostgresOutbox.option_prefixes,
        "postgresql://USER@HOST:PORT/DB",
        "--postgres-table: ",
    ),
}


def build_store(args: argparse.Namespace, *, create: bool = False) -> OutboxStore:
    """The store the options name; nothing is opened (no file, no connection).

    ``create`` applies to PostgreSQL (``deliver`` creates a missing table); the CLI never
    creates a SQLite file or checks less of a Redis than the app does.

    Example:
        >>> ns = argparse.Namespace(path="events.db", redis_url=None, postgres_url=None,
        ...                         allow_eviction=False)
        >>> build_store(ns)
        SQLiteOutbox('events.db')
    """
    kind, value = choose(args)
    allow_eviction = bool(getattr(args, "allow_eviction", False))
    if allow_eviction and kind != "redis":
        raise UsageError("--allow-eviction is for a Redis outbox (--redis-url)")
    if kind in _SERVERS:
        option, what, prefixes, use, bad_value = _SERVERS[kind]
        if not value.startswith(prefixes):
            raise UsageError(f"{option} is not a {what} URL (scheme {_scheme(value)!r}): use {use}")
        try:
            urlsplit(value).port  # noqa: B018 (a port that is not a number raises ValueError)
        except ValueError as exc:
            raise UsageError(f"{option} is not a usable {what} URL: {exc}") from None
        try:
            if kind == "redis":
                return RedisOutbox(value, prefix=args.redis_prefix, allow_eviction=allow_eviction)
            return PostgresOutbox(value, table=args.postgres_table, create=create)
        except ValueError as exc:
            raise UsageError(f"{bad_value}{exc}") from None
    if not value:
        raise UsageError("--path is empty: give the outbox file")
    # create=False: a typo in the path is an error, not a fresh empty outbox.
    return SQLiteOutbox(value, create=False)


def vacuum_problem(store: OutboxStore) -> str | None:
    """Why ``purge --vacuum`` cannot shrink ``store``, or None when it can (SQLite).

    Example:
        >>> vacuum_problem(SQLiteOutbox("events.db")) is None
        True
        >>> print(vacuum_problem(RedisOutbox()))
        --vacuum is for SQLite outboxes: Redis frees the memory of purged events itself
    """
    if type(store).vacuum is not OutboxStore.vacuum:
        return None
    if isinstance(store, RedisOutbox):
        why = "Redis frees the memory of purged events itself"
    elif isinstance(store, PostgresOutbox):
        why = (
            "PostgreSQL's autovacuum reuses the space of purged rows (run VACUUM FULL on the "
            "table yourself to give it back to the filesystem)"
        )
    else:
        why = f"{store.description} has nothing to vacuum"
    return f"--vacuum is for SQLite outboxes: {why}"


#: ``--state not-recorded``: delivered, but the provider recorded nothing.
NOT_RECORDED = "not-recorded"

_UNDELIVERED: tuple[str, ...] = tuple(s.replace("_", "-") for s in STATES if s != "delivered")

#: The states ``--state`` takes, as spelled on the command line (``all`` is every one of them
#: but ``not-recorded``).
LISTABLE: tuple[str, ...] = _UNDELIVERED + (
    (NOT_RECORDED,) if "not_recorded" in LIST_STATES else ()
)


def row_json(row: OutboxRow) -> str:
    """One JSON Lines line for ``row``: plain data, no API key (the store never has one).

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {"click_id": "c"}, state="dead",
        ...                 attempts=3, last_error="HTTP 401 unauthorized")
        >>> data = json.loads(row_json(row))
        >>> data["event_id"], data["state"], data["last_error"], data["event"]["click_id"]
        ('evt_1', 'dead', 'HTTP 401 unauthorized', 'c')
    """
    data: dict[str, Any] = {
        "event_id": row.event_id,
        "state": row.state,
        "provider": row.provider,
        "kind": row.kind,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "error_code": row.error_code,
        "outcome": row.outcome,
        "outcome_reason": row.outcome_reason,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "next_attempt_at": row.next_attempt_at,
        "event": row.event,
    }
    return json.dumps(data)


def row_text(row: OutboxRow, with_state: bool = False) -> str:
    """One line for a person: the event id, provider and kind, and its last error (or, for a
    delivered event, the outcome and its reason).

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {}, state="dead", last_error="HTTP 401")
        >>> row_text(row)
        'evt_1  dub lead  HTTP 401'
        >>> row_text(OutboxRow("evt_2", "pimms", "sale", {}), with_state=True)
        'evt_2  pending  pimms sale  -'
        >>> row_text(OutboxRow("evt_3", "dub", "sale", {}, state="delivered",
        ...          outcome="not_recorded", outcome_reason="no_customer"), with_state=True)
        'evt_3  delivered  dub sale  outcome not_recorded (no_customer)'
        >>> row_text(OutboxRow("evt_4", "dub", "lead", {}, state="dead",
        ...          last_error="event evt_4 not delivered: HTTP 503 unavailable: down"))
        'evt_4  dub lead  HTTP 503 unavailable: down'
    """
    state = f"  {row.state.replace('_', '-')}" if with_state else ""
    # The stored error names its event: said once, at the start of the line.
    detail = (row.last_error or "-").removeprefix(f"event {row.event_id} not delivered: ")
    if row.state == "delivered" and row.outcome is not None:
        reason = f" ({row.outcome_reason})" if row.outcome_reason else ""
        detail = f"outcome {row.outcome}{reason}"
    return f"{row.event_id}{state}  {row.provider} {row.kind}  {detail}"


def _states(state: str) -> list[ListState]:
    chosen = _UNDELIVERED if state == "all" else (state,)
    found: list[ListState] = []
    for name in chosen:
        spelled = name.replace("-", "_")
        for known in LIST_STATES:
            if known == spelled:
                found.append(known)
    return found


async def list_rows(store: OutboxStore, state: str, limit: int, *, as_json: bool = False) -> int:
    """Print the rows of ``store`` in ``state`` (one of :data:`LISTABLE`, or ``"all"``).

    Example:
        >>> import asyncio, os, tempfile
        >>> from asgi_attribution.transports import SQLiteOutbox
        >>> store = SQLiteOutbox(os.path.join(tempfile.mkdtemp(), "events.db"))
        >>> asyncio.run(list_rows(store, "dead", 10))
        no dead letters
        0

    An empty state says so (on stderr with ``--json``: JSON Lines stay JSON).
    """
    wanted = _states(state)
    if wanted != ["dead"] and type(store).list is OutboxStore.list:
        # Checked before the store is opened: a usage error touches nothing.
        raise UsageError(
            f"{store.description} cannot list {state} events yet (it lists dead letters only): "
            "use --state dead"
        )
    async with store:
        rows = await store.list_rows(wanted, limit)
        unreadable = (await store.status()).unreadable  # a damaged file: named, never skipped
    for row in rows:
        print(row_json(row) if as_json else row_text(row, with_state=wanted != ["dead"]))
    if not rows and not unreadable:
        print(_NONE.get(state, f"no {state} events"), file=sys.stderr if as_json else sys.stdout)
    for name in unreadable:
        if as_json:
            print(json.dumps({"id": name, "state": "unreadable"}))
        else:
            print(f"{name}  unreadable  -  cannot be read from the damaged store")
    return EXIT_FAILED if unreadable else EXIT_OK


# What ``list`` says about an empty state.
_NONE = {
    "dead": "no dead letters",
    "all": "no undelivered events (pending, in flight or dead)",
    NOT_RECORDED: "no delivered events that the provider did not record",
    "inflight": "no events in flight",
}

PROG = "asgi-attribution outbox"

#: The environment variable of each provider's API key, as the HTTP transport reads them.
KEY_VARIABLES: tuple[str, ...] = (DUB.api_key_env, PIMMS.api_key_env)


def missing_key(api_key: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The one-line reason ``deliver`` cannot authenticate, or None when a key is set.

    ``api_key`` (``--api-key``) serves every event; without it, at least one provider's variable
    must be set (events of a provider without its key become dead letters naming the variable,
    to ``outbox retry`` once it is set).

    Example:
        >>> missing_key(None, {"DUB_API_KEY": "dub_xxx"}) is None
        True
        >>> missing_key(None, {"DUB_API_KEY": ""})
        'no API key: set DUB_API_KEY (PIMMS_API_KEY for PIMMS events) or pass --api-key'
    """
    environ = os.environ if environ is None else environ
    if api_key or any(environ.get(name) for name in KEY_VARIABLES):
        return None
    first, *others = KEY_VARIABLES
    also = f" ({', '.join(others)} for PIMMS events)" if others else ""
    return f"no API key: set {first}{also} or pass --api-key"


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = Progress(4, out, enabled=True)
        >>> bar.update(done=2, dead=0, left=2, force=True)
        >>> out.getvalue()
        '\\r[###############...............] 2 delivered, 0 dead, 2 left '
    """

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0

    def update(self, done: int, dead: int, left: int, force: bool = False) -> None:
        """Redraw the bar (at most ten times a second unless ``force``)."""
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
        """End the bar's line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _transport(args: argparse.Namespace, store: OutboxStore) -> OutboxTransport:
    try:
        retry = RetryPolicy(
            max_attempts=args.max_attempts,
            max_elapsed=args.max_elapsed,
            initial_backoff=args.initial_backoff,
            max_backoff=args.max_backoff,
        )
        http = HTTPTransport(
            args.api_key,
            base_url=args.base_url,
            timeout=args.timeout,
            retry=retry,
            concurrency=args.concurrency,
            rate_limit_share=args.rate_limit_share,
        )
        return OutboxTransport(
            store,
            http,
            concurrency=args.concurrency,
            lease=args.lease,
            poll_interval=0.2 if not args.follow else 1.0,
            shutdown_timeout=0,
            retry_open=False,  # a store that cannot be opened ends the command (exit 2)
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


class _Waiting:
    """Notices ``deliver`` waiting (events left, none finished for a while) and says for what."""

    AFTER = 2.0  # seconds without progress before it says so (once per stall)

    def __init__(self) -> None:
        self._done, self._since, self._said = -1, time.monotonic(), False

    def stalled(self, done: int, left: int) -> bool:
        now = time.monotonic()
        if done != self._done or not left:
            self._done, self._since, self._said = done, now, False
            return False
        if self._said or now - self._since < self.AFTER:
            return False
        self._said = True
        return True

    @staticmethod
    async def why(store: OutboxStore, args: argparse.Namespace) -> str:
        counts = (await store.status()).counts
        inflight, pending = counts.get("inflight", 0), counts.get("pending", 0)
        parts = []
        if inflight:
            parts.append(
                f"{inflight} events in flight under another worker's claim: a worker that "
                "crashed gives them back when its lease ends, up to the lease after it claimed "
                f"them (60s by default; --lease {args.lease:g}s here)"
            )
        if pending:
            parts.append(
                f"{pending} pending events whose next attempt is not due yet (backoff up to "
                f"{args.max_backoff:g}s)"
            )
        until = f"; stopping at --deadline {args.deadline:g}s" if args.deadline else ""
        return f"waiting for {' and '.join(parts) or 'the store'}{until} (Ctrl-C stops)"


async def deliver(args: argparse.Namespace, store: OutboxStore) -> int:
    """Deliver until nothing is left (or, with ``--follow``, until SIGINT/SIGTERM).

    Returns 1 when events became dead letters, or (without ``--follow``) were left undelivered,
    also when delivery paused on a fault of the whole integration (a wrong API key): every
    event would meet it, so the command stops and says so, the events still pending.
    """
    transport = _transport(args, store)
    # Opened here first: a store that cannot be used is one line and exit code 2.
    await store.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # A worker stops cleanly: in-flight claims are given back, nothing is lost.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    paused: str | None = None
    try:
        await transport.start()
        total = await store.unfinished()
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = Progress(total, sys.stderr, enabled=bool(show) and not args.follow)
        deadline = None if args.deadline is None else time.monotonic() + args.deadline
        waiting = _Waiting()
        while not stop.is_set():
            left = await store.unfinished()
            stats = transport.stats
            progress.update(stats.sent, stats.failed, left)
            if waiting.stalled(stats.sent + stats.failed + stats.retried, left):
                print(error_line(PROG, await waiting.why(store, args)), file=sys.stderr)
            if left == 0 and not args.follow:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            paused = transport.paused
            if paused is not None and not args.follow:
                break  # every event would meet the same fault: stop, keep them pending
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        progress.update(transport.stats.sent, transport.stats.failed, left, force=True)
        progress.finish()
    finally:
        await transport.aclose()
        await store.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
    if paused is not None and not args.follow:
        print(
            error_line(
                PROG,
                f"delivery paused: {paused}: every event would fail the same way, so they stay "
                "pending; fix the cause (the API key, --base-url) and run deliver again",
            ),
            file=sys.stderr,
        )
    stats = transport.stats
    left = transport.left_in_store
    summary = f"{stats.sent} delivered, {stats.failed} dead, {stats.retried} retried"
    print(summary + (f", {left} left in the outbox" if left else ""), file=sys.stderr)
    # A stopped --follow worker leaves scheduled retries behind by design; only dead letters fail.
    unfinished = bool(left) and not args.follow
    return EXIT_FAILED if stats.failed or unfinished else EXIT_OK


_DEFAULTS = RetryPolicy()

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_FAILED = (
    "some events failed: dead letters, events left undelivered, unknown event ids, refused "
    "retries, problems with the store"
)

DESCRIPTION = wrap(
    "Inspect and operate a durable outbox. Select the store with --path FILE (SQLite), "
    "--redis-url URL (redis://, rediss:// or unix://) or --postgres-url URL (postgresql://); "
    "ASGI_ATTRIBUTION_OUTBOX in the environment works too. The CLI never creates an outbox "
    "(a wrong path is an error), except init, which creates a PostgreSQL outbox table.",
    "Run asgi-attribution outbox COMMAND --help for the options of each.",
)


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"45s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``.

    Example:
        >>> parse_duration("7d"), parse_duration("1.5h"), parse_duration("90")
        (604800.0, 5400.0, 90.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if match is None and text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: a duration cannot be negative (e.g. 7d for 7 days)"
        )
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h, d or w (e.g. 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


#: The options that take a duration (a value such as ``-1d`` is taken as theirs, not as an option).
DURATION_OPTIONS = ("--older-than", "--lease", "--max-elapsed", "--deadline")


def duration_values(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--older-than -1d`` joined into ``--older-than=-1d``.

    argparse reads a value that starts with ``-`` (and is no plain number) as an option and
    says "expected one argument"; joined, the value reaches :func:`parse_duration`, which
    says what is wrong with it.

    Example:
        >>> duration_values(["purge", "--older-than", "-1d", "--delivered"])
        ['purge', '--older-than=-1d', '--delivered']
    """
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in DURATION_OPTIONS and re.match(r"-\.?\d", arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


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


def _store_options() -> CommandParser:
    store = CommandParser(add_help=False)
    where = store.add_argument_group("store (one of)")
    where.add_argument("--path", help="SQLite outbox file")
    where.add_argument("--redis-url", help="Redis URL (redis://, rediss:// or unix://)")
    where.add_argument("--postgres-url", help="PostgreSQL URL (postgresql://USER@HOST:PORT/DB)")
    more = store.add_argument_group("store options")
    more.add_argument(
        "--redis-prefix",
        default=DEFAULT_REDIS_PREFIX,
        help="key prefix of the Redis outbox (default: %(default)s)",
    )
    more.add_argument(
        "--allow-eviction",
        action="store_true",
        help="use a Redis whose maxmemory-policy may evict keys (refused by default: events "
        "would be lost silently)",
    )
    more.add_argument(
        "--postgres-table",
        default=DEFAULT_POSTGRES_TABLE,
        help="[schema.]table of the PostgreSQL outbox (default: %(default)s)",
    )
    return store


def build_parser() -> CommandParser:
    """The ``outbox`` parser and its commands.

    Example:
        >>> args = build_parser().parse_args(["list", "--not-recorded", "--path", "x.db"])
        >>> args.command, args.state
        ('list', 'not-recorded')
    """
    store = _store_options()
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
        "counts by state, the oldest pending event's age, problems with the store",
        failed="the outbox holds dead letters, or the store reports problems (a damaged "
        "file, unreadable rows, a replaced file, a Redis that may lose or evict events)",
        description=[
            "Counts by state and the oldest pending event's age, then one line per problem "
            "the store reports: SQLite quick_check failures, rows that cannot be read (by "
            "id), a deleted or replaced file; a Redis without an append-only file or with an "
            "evicting maxmemory-policy; a PostgreSQL server without fsync.",
        ],
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _list_options(command)
    retry = command(
        "retry",
        "dead letters back to pending, with a fresh budget",
        failed="some EVENT_IDs are not dead letters in this outbox, or a retry was refused "
        "(named on stderr)",
        description=[
            "Dead letters (all, or these EVENT_IDs) back to pending, with a fresh budget of "
            "attempts and time.",
            "A dead letter whose last error is click_not_found is not retried unless --force: "
            "the provider keeps the (customer, event name) key 7 days, so a retry would be "
            "answered 200 with link: null and record nothing.",
        ],
    )
    retry.add_argument("event_ids", nargs="*", metavar="EVENT_ID", help="only these (default: all)")
    retry.add_argument(
        "--force", action="store_true", help="also retry dead letters a retry cannot help"
    )
    purge = command(
        "purge",
        "delete old delivered events (--vacuum: then shrink the file)",
        description=[
            "Delete delivered events older than --older-than, in small batches. With --vacuum "
            "(SQLite only), VACUUM the file afterwards so it shrinks to its live rows.",
        ],
    )
    purge.add_argument("--delivered", action="store_true", required=True, help="delivered ones")
    purge.add_argument(
        "--older-than", type=parse_duration, required=True, help="age, e.g. 7d, 12h, 30m"
    )
    purge.add_argument(
        "--vacuum", action="store_true", help="VACUUM after purging (SQLite outboxes)"
    )
    _deliver_options(
        command(
            "deliver",
            "deliver pending events now (--follow: keep running)",
            failed="events became dead letters, or (without --follow) some were left "
            "undelivered (delivery paused on a fault of the integration: a wrong API key)",
            description=[
                "Deliver pending events now; with --follow, keep running as a worker until "
                "SIGINT/SIGTERM (in-flight claims are given back, nothing is lost).",
                "Each event goes to its own provider with --api-key, else with that "
                f"provider's key from the environment ({', '.join(KEY_VARIABLES)}). With no "
                "key at all, deliver stops before touching the store (exit code 2).",
                "A PostgreSQL outbox table is created if missing.",
            ],
        )
    )
    commands.add_parser(
        "init",
        parents=[store],
        help="create or upgrade a PostgreSQL outbox table and print its schema version",
        description=wrap(
            "Create (or upgrade) the PostgreSQL outbox table named by --postgres-table and "
            "print its schema version. Safe to run again and from many hosts at once. SQLite "
            "files and Redis streams need no init: the app creates them on first use."
        ),
        epilog=exit_codes("not used by init", usage="usage error, or the schema cannot be made"),
    )
    return parser


def _list_options(command: Callable[..., CommandParser]) -> None:
    states = ", ".join(LISTABLE)
    listing: CommandParser = command(
        "list",
        "list undelivered events: pending, in flight, dead letters",
        failed="not used by list",
        description=[
            f"List events, oldest first. States: {states}; all is every one of them but "
            f"{NOT_RECORDED} (delivered events are not listed otherwise). {NOT_RECORDED} "
            "lists delivered events that the provider answered 2xx without recording them "
            "(outcome duplicate or not_recorded), with the reason.",
            "--json prints JSON Lines: one JSON object per event and line (event_id, state, "
            "provider, kind, attempts, last_error, error_code, outcome, outcome_reason, "
            "created_at, updated_at, next_attempt_at, event).",
        ],
    )
    which = listing.add_mutually_exclusive_group()
    which.add_argument(
        "--state",
        choices=[*LISTABLE, "all"],
        default="all",
        metavar="STATE",
        help=f"the events in this state: {', '.join(LISTABLE)} or all (default: all)",
    )
    which.add_argument(
        "--dead", dest="state", action="store_const", const="dead", help="same as --state dead"
    )
    which.add_argument(
        "--not-recorded",
        dest="state",
        action="store_const",
        const=NOT_RECORDED,
        help=f"same as --state {NOT_RECORDED}",
    )
    listing.add_argument("--limit", type=positive_int, default=100, help="at most N (default: 100)")
    listing.add_argument("--json", action="store_true", help="print JSON Lines (one per event)")


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
        "--rate-limit-share",
        type=positive_float,
        default=0.8,
        help="fraction of the API key's rate limit to use, in (0, 1] (default: 0.8)",
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
