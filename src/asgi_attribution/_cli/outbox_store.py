"""Which outbox a command works on: ``--path``, ``--redis-url`` or ``--postgres-url`` (or
``ASGI_ATTRIBUTION_OUTBOX``), checked before anything is opened; passwords never echoed.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..transports import OutboxStore, RedisOutbox, SQLiteOutbox
from ..transports.outbox import PostgresOutbox
from .common import UsageError

__all__ = [
    "DEFAULT_POSTGRES_TABLE",
    "DEFAULT_REDIS_PREFIX",
    "ONE_OF",
    "build_store",
    "choose",
    "redact",
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


def _check_port(option: str, url: str, what: str) -> None:
    try:
        urlsplit(url).port  # noqa: B018 (a port that is not a number raises ValueError)
    except ValueError as exc:
        raise UsageError(f"{option} is not a usable {what} URL: {exc}") from None


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
    if kind == "redis":
        if not value.startswith(RedisOutbox.option_prefixes):
            raise UsageError(
                f"--redis-url is not a Redis URL (scheme {_scheme(value)!r}): use "
                "redis://HOST:PORT/DB, rediss://... or unix://PATH"
            )
        _check_port("--redis-url", value, "Redis")
        try:
            return RedisOutbox(value, prefix=args.redis_prefix, allow_eviction=allow_eviction)
        except ValueError as exc:
            raise UsageError(f"--redis-url is not a usable Redis URL: {exc}") from None
    if kind == "postgres":
        if not value.startswith(PostgresOutbox.option_prefixes):
            raise UsageError(
                f"--postgres-url is not a PostgreSQL URL (scheme {_scheme(value)!r}): use "
                "postgresql://USER@HOST:PORT/DB"
            )
        _check_port("--postgres-url", value, "PostgreSQL")
        try:
            return PostgresOutbox(value, table=args.postgres_table, create=create)
        except ValueError as exc:
            raise UsageError(f"--postgres-table: {exc}") from None
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
