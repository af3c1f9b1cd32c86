"""The PostgreSQL outbox's schema: its tables, their version, and the SQL the store runs.

One table per outbox (default ``asgi_attribution_outbox``) and one shared
``asgi_attribution_schema_version`` table recording which version of each outbox table exists.
Times are ``timestamptz`` set from the database clock (``now()``); a statement-level trigger
sends ``NOTIFY <table>`` after inserts, which PostgreSQL delivers when the inserting transaction
commits (and never if it rolls back). Needs ``pip install 'asgi-attribution[postgres]'``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..._events import ORDER_HOLDS, ORDER_WAITS
from ..._exceptions import OutboxError
from ._store import OutboxRow

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "SECONDS",
    "OutboxTables",
    "db_values",
    "init_schema",
    "require_psycopg",
    "row_from_db",
    "schema_version",
]


if TYPE_CHECKING:
    from psycopg import AsyncConnection

#: The version of the outbox table this release creates and reads.
SCHEMA_VERSION = 1

VERSION_TABLE = "asgi_attribution_schema_version"

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")

#: An interval of ``%s`` seconds, in SQL.
SECONDS = "make_interval(secs => %s)"

#: The columns :func:`row_from_db` reads: times as seconds from the database's ``now()``, which
#: the store places on its own clock (so no host's wall clock is ever compared with another's).
COLUMNS = (
    "id, event_id, provider, kind, event, state, attempts, last_error, error_code, outcome,"
    " outcome_reason,"
    " extract(epoch FROM next_attempt_at - now())::float8,"
    " extract(epoch FROM created_at - now())::float8,"
    " extract(epoch FROM updated_at - now())::float8,"
    " extract(epoch FROM first_attempt_at - now())::float8"
)

# Any stable 64-bit number: serialises schema changes of concurrent first uses.
_LOCK_KEY = 0x61736769_6F757462


def require_psycopg() -> Any:
    """The ``psycopg`` module, or an :class:`OutboxError` naming the extra to install.

    Example:
        >>> require_psycopg().__name__
        'psycopg'
    """
    try:
        import psycopg
        import psycopg_pool  # noqa: F401  (the store's pool)
    except ImportError:
        raise OutboxError(
            "the PostgreSQL outbox needs psycopg 3 and psycopg-pool:"
            " pip install 'asgi-attribution[postgres]'"
        ) from None
    return psycopg


@dataclass(frozen=True)
class OutboxTables:
    """The names and statements of one outbox table (``table``, optionally ``schema.table``).

    Names are plain lower-case SQL identifiers, checked here, so they can be quoted into SQL.

    Example:
        >>> tables = OutboxTables("myapp.signup_outbox")
        >>> tables.table, tables.channel
        ('"myapp"."signup_outbox"', 'signup_outbox')
        >>> OutboxTables("Robert'); DROP TABLE users")
        Traceback (most recent call last):
        ...
        ValueError: outbox table must be [schema.]name in lower-case letters, digits and _ ...
    """

    name: str = "asgi_attribution_outbox"

    def __post_init__(self) -> None:
        parts = self.name.split(".")
        if len(parts) > 2 or not all(_NAME.fullmatch(p) for p in parts):
            raise ValueError(
                "outbox table must be [schema.]name in lower-case letters, digits and _"
                f" (at most 48 each), got {self.name!r}"
            )

    @property
    def schema(self) -> str | None:
        """The PostgreSQL schema named in ``name``, if any (else the ``search_path``)."""
        return self.name.split(".")[0] if "." in self.name else None

    @property
    def channel(self) -> str:
        """The ``LISTEN``/``NOTIFY`` channel: the table's own name."""
        return self.name.split(".")[-1]

    def _q(self, name: str) -> str:
        return f'"{self.schema}"."{name}"' if self.schema else f'"{name}"'

    @property
    def table(self) -> str:
        """The quoted, qualified table name."""
        return self._q(self.channel)

    @property
    def versions(self) -> str:
        """The quoted version table (in the same schema)."""
        return self._q(VERSION_TABLE)

    def ddl(self) -> list[str]:
        """The statements creating version 1 (each idempotent)."""
        t, short = self.table, self.channel
        notify = self._q(f"{short}_notify")
        return [
            *([f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'] if self.schema else []),
            f"""CREATE TABLE IF NOT EXISTS {self.versions} (
                table_name text PRIMARY KEY,
                version integer NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now())""",
            f"""CREATE TABLE IF NOT EXISTS {t} (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                event_id text NOT NULL UNIQUE,
                provider text NOT NULL,
                kind text NOT NULL,
                event jsonb NOT NULL,
                state text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
                attempts integer NOT NULL DEFAULT 0,
                next_attempt_at timestamptz NOT NULL DEFAULT now(),
                lease_until timestamptz,
                lease_owner text,
                last_error text,
                error_code text,
                outcome text,
                outcome_reason text,
                first_attempt_at timestamptz,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now())""",
            f'CREATE INDEX IF NOT EXISTS "{short}_due" ON {t} (next_attempt_at, id)'
            " WHERE state = 'pending'",
            f'CREATE INDEX IF NOT EXISTS "{short}_leases" ON {t} (lease_until)'
            " WHERE state = 'inflight'",
            f'CREATE INDEX IF NOT EXISTS "{short}_done" ON {t} (updated_at)'
            " WHERE state = 'delivered'",
            f"CREATE INDEX IF NOT EXISTS \"{short}_dead\" ON {t} (id) WHERE state = 'dead'",
            *(ddl for _name, ddl in self.open_holders()),
            f"""CREATE OR REPLACE FUNCTION {notify}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_notify('{short}', ''); RETURN NULL; END $$""",
            f'DROP TRIGGER IF EXISTS "{short}_notify" ON {t}',
            f'CREATE TRIGGER "{short}_notify" AFTER INSERT ON {t}'
            f" FOR EACH STATEMENT EXECUTE FUNCTION {notify}()",
        ]

    def open_holders(self) -> list[tuple[str, str]]:
        """(quoted name, DDL) of each index of unfinished order-key holders (the claim's
        order): leads per customer, sales per invoice, what :meth:`held` looks up."""
        return [
            (
                self._q(f"{self.channel}_open_{kind}s"),
                f'CREATE INDEX IF NOT EXISTS "{self.channel}_open_{kind}s" ON {self.table}'
                f" (provider, (event->>'{field}'), id)"
                f" WHERE kind = '{kind}' AND state IN ('pending', 'inflight')",
            )
            for kind, (_space, field) in ORDER_HOLDS.items()
        ]

    def held(self, row: str) -> str:
        """SQL true for the row aliased ``row`` when a row of the same provider stored before it
        (a lower id), pending or in flight (leased by any worker), holds the order key it waits
        on: a customer's sale or update behind its lead, a refund behind the sale with its
        invoice id."""
        waits = [
            f"({row}.kind = '{kind}' AND EXISTS (SELECT 1 FROM {self.table} AS h"
            f" WHERE h.kind = '{holder}' AND h.state IN ('pending', 'inflight')"
            f" AND h.provider = {row}.provider AND h.event->>'{held_field}'"
            f" = {row}.event->>'{field}' AND h.id < {row}.id))"
            for kind, (space, field) in ORDER_WAITS.items()
            for holder, (held_space, held_field) in ORDER_HOLDS.items()
            if held_space == space
        ]
        return f"({' OR '.join(waits)})"

    def insert(self) -> str:
        """One pending row, due at once (``%s``: event_id, provider, kind, event JSON)."""
        return (
            f"INSERT INTO {self.table} (event_id, provider, kind, event)"
            " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (event_id) DO NOTHING"
        )


async def init_schema(
    connection: AsyncConnection[Any] | str, table: str = "asgi_attribution_outbox"
) -> int:
    """Create (or check) the outbox table ``table``; return the schema version found or made.

    ``connection`` is a conninfo / ``postgresql://`` URL or an open psycopg ``AsyncConnection``
    in autocommit mode. Safe to run from many processes at once (an advisory lock serialises
    them) and again on every start; a table made by a newer release raises :class:`OutboxError`.
    :class:`PostgresOutbox` runs it on first use; ``asgi-attribution outbox init`` runs it ahead.

    Example:
        >>> import asyncio
        >>> asyncio.run(init_schema("postgresql://app@db.internal/app"))  # doctest: +SKIP
        1
    """
    psycopg = require_psycopg()
    tables = OutboxTables(table)
    if isinstance(connection, str):
        try:
            conn = await psycopg.AsyncConnection.connect(connection, autocommit=True)
        except psycopg.Error as exc:
            raise OutboxError(f"cannot create the outbox schema: {exc}") from None
        async with conn:
            return await _migrate(conn, tables)
    return await _migrate(connection, tables)


async def _migrate(conn: AsyncConnection[Any], tables: OutboxTables) -> int:
    psycopg = require_psycopg()
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            found = await schema_version(conn, tables)
            if found is not None and found > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox table {tables.name} has schema version {found}; this release knows"
                    f" up to {SCHEMA_VERSION}: upgrade asgi-attribution"
                )
            if found == SCHEMA_VERSION:
                # A table made before the claim kept the order: its indexes, once.
                for name, ddl in tables.open_holders():
                    cur = await conn.execute("SELECT to_regclass(%s)", (name,))
                    made = await cur.fetchone()
                    if made is None or made[0] is None:
                        await conn.execute(ddl)
                return found
            for statement in tables.ddl():
                await conn.execute(statement)
            await conn.execute(
                f"INSERT INTO {tables.versions} (table_name, version) VALUES (%s, %s)"
                " ON CONFLICT (table_name) DO UPDATE SET version = EXCLUDED.version,"
                " updated_at = now()",
                (tables.name, SCHEMA_VERSION),
            )
            return SCHEMA_VERSION
    except psycopg.Error as exc:
        raise OutboxError(f"cannot create the outbox table {tables.name}: {exc}") from None


async def schema_version(conn: AsyncConnection[Any], tables: OutboxTables) -> int | None:
    """The version recorded for ``tables`` (None when its outbox table does not exist)."""
    cur = await conn.execute(
        "SELECT to_regclass(%s), to_regclass(%s)", (tables.versions, tables.table)
    )
    row = await cur.fetchone()
    if row is None or row[0] is None or row[1] is None:
        return None
    cur = await conn.execute(
        f"SELECT version FROM {tables.versions} WHERE table_name = %s", (tables.name,)
    )
    found = await cur.fetchone()
    return None if found is None else int(found[0])


def db_values(row: OutboxRow) -> tuple[str, str, str, str]:
    """The parameters of :meth:`OutboxTables.insert` for ``row``."""
    return (row.event_id, row.provider, row.kind, json.dumps(row.event, separators=(",", ":")))


def row_from_db(r: tuple[Any, ...], now: float) -> OutboxRow:
    """The row read with :data:`COLUMNS`, its times placed on a clock reading ``now``.

    Example:
        >>> r = (7, "evt_1", "dub", "lead", {"click_id": "c"}, "dead", 3, "HTTP 401", "http_401",
        ...      None, None, -5.0, -60.0, -5.0, -30.0)
        >>> row = row_from_db(r, now=1000.0)
        >>> row.handle, row.state, row.created_at, row.first_attempt_at, row.error_code
        ('7', 'dead', 940.0, 970.0, 'http_401')
    """
    rid, event_id, provider, kind, event, state, attempts, error, code, outcome, reason = r[:11]
    due, created, updated, first = r[11:]
    return OutboxRow(
        event_id=event_id,
        provider=provider,
        kind=kind,
        event=event if isinstance(event, dict) else json.loads(event),
        state=state,
        attempts=attempts,
        next_attempt_at=now + due,
        last_error=error,
        created_at=now + created,
        updated_at=now + updated,
        first_attempt_at=None if first is None else now + first,
        handle=str(rid),
        error_code=code,
        outcome=outcome,
        outcome_reason=reason,
    )
