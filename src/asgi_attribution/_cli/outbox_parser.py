"""The options of ``asgi-attribution outbox ...``: the store options every command shares, and
each command's own; durations such as ``7d``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence

from ..transports import RetryPolicy
from .common import CommandParser, exit_codes, positive_float, positive_int, wrap
from .outbox_deliver import KEY_VARIABLES, PROG
from .outbox_list import LISTABLE, NOT_RECORDED
from .outbox_store import DEFAULT_POSTGRES_TABLE, DEFAULT_REDIS_PREFIX

__all__ = ["PROG", "build_parser", "parse_duration", "positive_duration"]

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
