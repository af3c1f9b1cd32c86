"""The transactional outbox: events in a PostgreSQL table, appended with the caller's own rows.

- :func:`append_within` inserts the event on the caller's connection, inside the caller's
  transaction: the signup and its lead commit together, or neither does. It accepts a psycopg 3
  ``AsyncConnection``, an asyncpg ``Connection``, or a SQLAlchemy ``AsyncConnection`` or
  ``AsyncSession`` (on the ``postgresql+psycopg`` or ``postgresql+asyncpg`` driver), checked to
  be inside (or about to start) a transaction the caller will commit; SQLAlchemy and asyncpg
  are never imported unless the object given comes from them.
- Workers claim due rows with ``FOR UPDATE SKIP LOCKED`` and a lease, all times from the
  database clock (``now()``), so any number of workers on any number of hosts share the table
  without stepping on each other; a killed worker's rows come back when its lease ends. The
  claim keeps causal order: it passes over a customer's sale or update while a lead of that
  customer stored before it is pending or leased by any worker, and a refund while such a sale
  with its invoice id is (indexes of unfinished leads per customer, sales per invoice).
- Workers are woken by ``LISTEN``/``NOTIFY`` on one connection per store: PostgreSQL delivers a
  ``NOTIFY`` when the inserting transaction commits, so a worker hears of an event as soon as it
  can be claimed, and never of a rolled-back one. A lost connection (a database restart) is
  reopened with a growing pause and counts as a wake-up, since notifications sent meanwhile
  were missed; polling remains the fallback.
- The CLI's ``status``, ``list``, ``retry`` and ``purge`` run single autocommit statements on
  the same table, each short. The table is created on first use, versioned
  (:mod:`._postgres_schema`).

One concept, the PostgreSQL store: its appends (in their own commit, or in the caller's
transaction on psycopg or asyncpg), claims, the ``LISTEN`` that wakes them and the CLI's
maintenance all work on one table with one clock, the database's.

Needs ``pip install 'asgi-attribution[postgres]'`` (psycopg 3, psycopg-pool; asyncpg for
``within=`` on asyncpg connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..._exceptions import OutboxError
from ._postgres_schema import (
    COLUMNS,
    SECONDS,
    OutboxTables,
    db_values,
    init_schema,
    require_psycopg,
    row_from_db,
)
from ._store import (
    LIST_STATES,
    NOT_RECORDED_OUTCOMES,
    RETRY_REFUSED,
    STATES,
    AppendBatcher,
    ListState,
    OutboxRow,
    OutboxStatus,
    OutboxStore,
)

__all__ = [
    "ACCEPTED",
    "Listener",
    "PostgresMaintenance",
    "PostgresOutbox",
    "caller_connection",
    "init_schema",
]


if TYPE_CHECKING:
    from psycopg import AsyncConnection

#: The connection types an append within a transaction takes, for messages.
ACCEPTED = (
    "a psycopg.AsyncConnection, or a SQLAlchemy AsyncConnection or AsyncSession"
    " (driver postgresql+psycopg or postgresql+asyncpg), or an asyncpg.Connection"
)


async def caller_connection(connection: object) -> Any:
    """The driver connection behind ``connection`` (psycopg's ``AsyncConnection`` or asyncpg's
    ``Connection``), inside the caller's transaction.

    - a psycopg ``AsyncConnection``: inside ``async with conn.transaction():``, or without
      autocommit (psycopg then opens the transaction that your ``await conn.commit()`` ends);
    - an asyncpg ``Connection`` (or a pool's connection): inside ``async with
      conn.transaction():`` (asyncpg commits each statement on its own outside one);
    - a SQLAlchemy ``AsyncSession`` or ``AsyncConnection``: its transaction is begun if needed,
      as SQLAlchemy's own autobegin does, and ended by your ``commit()`` or ``rollback()``.

    Raises :class:`TypeError` naming the accepted types for anything else (a sync connection,
    an engine on another driver), and :class:`ValueError` for a connection that would commit
    the row on its own (autocommit outside a transaction block) or whose transaction failed.

    Example:
        >>> import asyncio
        >>> asyncio.run(caller_connection("postgresql://app@db/app"))
        Traceback (most recent call last):
        ...
        TypeError: append_within needs a psycopg.AsyncConnection, or a SQLAlchemy ...
    """
    module = type(connection).__module__
    if module.startswith("sqlalchemy"):
        return await _from_sqlalchemy(connection)
    if _is_asyncpg(connection):
        if not connection.is_in_transaction():  # type: ignore[attr-defined]
            raise ValueError(
                "append_within: this asyncpg connection has no transaction open, so the event"
                " would commit on its own; use `async with conn.transaction():` around your"
                " writes"
            )
        return connection
    if not _is_psycopg_async(connection):
        raise TypeError(f"append_within needs {ACCEPTED}, got {_name(connection)}")
    from psycopg import AsyncConnection
    from psycopg.pq import TransactionStatus

    assert isinstance(connection, AsyncConnection)
    status = connection.info.transaction_status
    if status == TransactionStatus.IDLE and connection.autocommit:
        raise ValueError(
            "append_within: this autocommit connection has no transaction open, so the event"
            " would commit on its own; use `async with conn.transaction():` around your writes"
        )
    if status == TransactionStatus.INERROR:
        raise ValueError(
            "append_within: the connection's transaction has failed; roll it back first"
        )
    if status not in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
        raise ValueError(f"append_within: the connection is not usable ({status.name})")
    return connection


async def _from_sqlalchemy(obj: Any) -> Any:
    from sqlalchemy.ext.asyncio import AsyncConnection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncSession

    if isinstance(obj, AsyncSession):
        conn = await obj.connection()  # begins the session's transaction if none is open
    elif isinstance(obj, SAConnection):
        conn = obj
        if not conn.in_transaction():
            await conn.begin()  # what SQLAlchemy's autobegin does; your commit() ends it
    else:
        raise TypeError(f"append_within needs {ACCEPTED}, got {_name(obj)}")
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if _is_asyncpg(driver):
        if not driver.is_in_transaction():
            # SQLAlchemy's asyncpg adapter starts the driver's transaction at the first
            # statement: before it, our insert would commit on its own.
            await conn.exec_driver_sql("SELECT 1")
        return await caller_connection(driver)
    if not _is_psycopg_async(driver):
        raise TypeError(
            f"append_within needs {ACCEPTED}; this engine's driver gives {_name(driver)}:"
            " create it with a postgresql+psycopg:// or postgresql+asyncpg:// URL"
        )
    return await caller_connection(driver)


def _is_psycopg_async(obj: object) -> bool:
    try:
        from psycopg import AsyncConnection
    except ImportError:  # without psycopg nothing can be one
        return False
    return isinstance(obj, AsyncConnection)


def _is_asyncpg(obj: object) -> bool:
    # An asyncpg connection exists only once asyncpg is imported: never import it here.
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:
        return False
    return isinstance(obj, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy))


def _numbered(sql: str) -> str:
    """``sql`` with asyncpg's ``$1, $2 ...`` for psycopg's ``%s`` placeholders.

    Example:
        >>> _numbered("INSERT INTO t (a, b) VALUES (%s, %s::jsonb)")
        'INSERT INTO t (a, b) VALUES ($1, $2::jsonb)'
    """
    first, *rest = sql.split("%s")
    return first + "".join(f"${n}{part}" for n, part in enumerate(rest, 1))


def _name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


logger = logging.getLogger("asgi_attribution")


class Listener:
    """Listen on ``channel`` in a background task; :meth:`wait` returns when woken.

    Example:
        >>> listener = Listener("postgresql://app@db/app", "asgi_attribution_outbox")
        >>> listener.running  # nothing connects before start()
        False
    """

    def __init__(self, conninfo: str, channel: str, *, connect_timeout: float = 5.0) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.connect_timeout = connect_timeout
        self._woken: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the background task runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start listening (idempotent); call from the event loop that will wait."""
        if self.running:
            return
        self._woken = asyncio.Event()
        self._woken.set()  # whatever was sent before we listened: look once
        self._task = asyncio.get_running_loop().create_task(
            self._listen(), name=f"asgi-attribution-listen-{self.channel}"
        )

    def clear(self) -> None:
        """Forget past wake-ups (call before looking for work, so none is missed after)."""
        if self._woken is not None:
            self._woken.clear()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; True if one came."""
        if self._woken is None or timeout <= 0:
            return False
        try:
            await asyncio.wait_for(self._woken.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _listen(self) -> None:
        import psycopg

        pause = 0.1
        while True:
            conn: Any = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=max(2, round(self.connect_timeout)),
                )
                await conn.execute(f'LISTEN "{self.channel}"')
                pause = 0.1
                if self._woken is not None:
                    self._woken.set()  # anything committed while we were away
                async for _ in conn.notifies():
                    if self._woken is not None:
                        self._woken.set()
            except psycopg.Error as exc:
                logger.info("outbox listener on %s: %s; reconnecting", self.channel, exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


class PostgresMaintenance:
    """Counts, listings, dead-letter retries and purges over :meth:`execute` (a mixin).

    Example:
        >>> from asgi_attribution.transports.outbox import PostgresOutbox
        >>> issubclass(PostgresOutbox, PostgresMaintenance)
        True
    """

    tables: OutboxTables
    retention: float | None
    problems: tuple[str, ...] = ()
    _next_purge = 0.0

    async def execute(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one autocommit statement; its rows (if any)."""
        raise NotImplementedError

    def now(self) -> float:
        """The store's clock."""
        raise NotImplementedError

    async def is_stored(self, event_id: str) -> bool:
        """True once the event is in the table (committed), whatever its state since."""
        found = await self.execute(
            f"SELECT 1 FROM {self.tables.table} WHERE event_id = %s", (event_id,)
        )
        return bool(found)

    async def unfinished(self) -> int:
        """Pending (including scheduled retries) plus in-flight rows."""
        found = await self.execute(
            f"SELECT count(*) FROM {self.tables.table} WHERE state IN ('pending', 'inflight')"
        )
        return int(found[0][0])

    async def status(self) -> OutboxStatus:
        """Counts by state, and the oldest unfinished row's age by the database clock."""
        t = self.tables.table
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        for state, n in await self.execute(f"SELECT state, count(*) FROM {t} GROUP BY state"):
            counts[state] = int(n)
        found = await self.execute(
            f"SELECT extract(epoch FROM now() - min(created_at))::float8 FROM {t}"
            " WHERE state IN ('pending', 'inflight')"
        )
        age = found[0][0]
        age = None if age is None else max(0.0, float(age))
        return OutboxStatus(counts, age, self.problems)

    async def list_dead(self, limit: int = 100) -> list[OutboxRow]:
        """Dead letters, oldest first."""
        return await self.list("dead", limit)

    async def list(self, state: ListState = "dead", limit: int = 100) -> list[OutboxRow]:
        """Rows in ``state`` (one of ``LIST_STATES``), oldest first."""
        if state not in LIST_STATES:
            raise ValueError(f"state must be one of {', '.join(LIST_STATES)}, got {state!r}")
        where, params = "state = %s", list[Any]([state])
        if state == "not_recorded":
            where, params = (
                "state = 'delivered' AND outcome = ANY(%s)",
                [list(NOT_RECORDED_OUTCOMES)],
            )
        found = await self.execute(
            f"SELECT {COLUMNS} FROM {self.tables.table} WHERE {where} ORDER BY id LIMIT %s",
            (*params, limit),
        )
        now = self.now()
        return [row_from_db(r, now) for r in found]

    async def retry_dead(
        self, event_ids: Sequence[str] | None = None, *, force: bool = False
    ) -> int:
        """Dead letters back to pending with a fresh budget; wake the workers. Those whose
        ``error_code`` a retry cannot help (``click_not_found``) stay dead unless ``force``."""
        t = self.tables.table
        where, params = "", []
        if event_ids is not None:
            where, params = " AND event_id = ANY(%s)", [list(event_ids)]
        if not force:
            refused = await self.execute(
                f"SELECT event_id, error_code FROM {t} WHERE state = 'dead'"
                f" AND error_code = ANY(%s){where}",
                [list(RETRY_REFUSED), *params],
            )
            for event_id, code in refused:
                logger.warning("dead letter %s not retried: %s", event_id, RETRY_REFUSED[code])
            where += " AND (error_code IS NULL OR NOT error_code = ANY(%s))"
            params.append(list(RETRY_REFUSED))
        found = await self.execute(
            f"WITH back AS (UPDATE {t} SET state = 'pending', attempts = 0,"
            " first_attempt_at = NULL, next_attempt_at = now(), updated_at = now()"
            f" WHERE state = 'dead'{where} RETURNING 1)"
            " SELECT n, pg_notify(%s, '') FROM (SELECT count(*) AS n FROM back) c",
            [*params, self.tables.channel],
        )
        return int(found[0][0])

    async def purge_delivered(self, older_than: float, *, batch: int = 1000) -> int:
        """Delete delivered rows last updated more than ``older_than`` seconds ago, in batches
        of ``batch`` rows (each its own short transaction)."""
        removed = 0
        while True:
            n = await self._purge_batch(older_than, batch)
            removed += n
            if n < batch:
                return removed

    async def _purge_batch(self, older_than: float, batch: int) -> int:
        t = self.tables.table
        found = await self.execute(
            f"WITH gone AS (DELETE FROM {t} WHERE id IN (SELECT id FROM {t}"
            f" WHERE state = 'delivered' AND updated_at <= now() - {SECONDS}"
            " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM gone",
            (older_than, batch),
        )
        return int(found[0][0])

    async def maintain(self) -> None:
        """Retention: remove delivered rows older than ``retention``, one small batch at a
        time and at most once a minute (claims run it too)."""
        if self.retention is None or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + 60.0
        await self._purge_batch(self.retention, 500)


if TYPE_CHECKING:
    from psycopg import AsyncConnection

#: What :func:`append_within` returns as ``reason``: the event is stored when you commit.


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PostgresOutbox(PostgresMaintenance, OutboxStore):
    """An outbox in a PostgreSQL table, shared by app instances and workers on many hosts.

    ``url`` is a libpq URL (``postgresql://user:pw@host/db``); ``table`` names the outbox table
    (``[schema.]name``, created with its indexes on first use unless ``create=False``).
    ``max_connections`` bounds the pool; ``append_timeout`` bounds each :meth:`append` (a row
    still queued is withdrawn; a write already sent says later whether it committed, and one
    that reaches the server past its deadline stores nothing: one delivery per event), the
    first connection of :meth:`open`, and each :meth:`append_within` insert (``SET LOCAL
    statement_timeout``); ``notify_wait`` is how long an idle
    :meth:`claim` waits for a ``NOTIFY`` before returning nothing (0: poll only);
    ``retention`` keeps delivered rows that many seconds (None: forever) and removes older ones
    in small batches while workers claim. ``worker`` names this store's claims (``lease_owner``).

    Example:
        >>> store = PostgresOutbox("postgresql://app:s3cret@db.internal/app", table="outbox")
        >>> tracker = Tracker("dub", api_key="dub_xxx", outbox=store)
        >>> store.description  # nothing connects before the tracker starts
        'postgresql://app:***@db.internal/app (outbox)'
        >>> from asgi_attribution.transports.outbox import open_store
        >>> type(open_store("postgres://db.internal/app")).__name__
        'PostgresOutbox'
    """

    option_prefixes = ("postgresql://", "postgres://")

    def __init__(
        self,
        url: str,
        *,
        table: str = "asgi_attribution_outbox",
        create: bool = True,
        max_connections: int = 10,
        append_timeout: float = 2.0,
        notify_wait: float = 1.0,
        retention: float | None = 7 * 86400.0,
        worker: str | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if append_timeout <= 0 or notify_wait < 0:
            raise ValueError(
                f"append_timeout must be > 0 and notify_wait >= 0, got {append_timeout}"
                f" and {notify_wait}"
            )
        self.url = url
        self.tables = OutboxTables(table)
        self.create = create
        self.max_connections = max_connections
        self.append_timeout = append_timeout
        self.notify_wait = notify_wait
        self.retention = retention
        self.description = f"{_safe_url(url)} ({table})"
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener = Listener(url, self.tables.channel)
        self.append_bound = append_timeout  # the batcher's timer: no task per signup
        self._batcher = AppendBatcher(self._append_many, timeout=append_timeout)
        self._next_purge = 0.0
        # The store's clock: the database's, carried by time.monotonic() between readings.
        self._offset = time.time() - time.monotonic()
        #: What :meth:`status` reports as wrong with the server's settings (found at open).
        self.problems: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"PostgresOutbox({self.description!r})"

    # -- connections ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool, check the server answers, and create (or check) the table.

        A server that does not answer fails within ``append_timeout`` (a first ``track_*``
        call opens the store: it waits no longer than that), not libpq's ``connect_timeout``.
        """
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return
        # A pool of an event loop that ended cannot be used (or closed) from this one.
        self._pool, self._loop = None, loop
        self._listener = Listener(self.url, self.tables.channel)
        psycopg = require_psycopg()
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.max_connections,
            kwargs={"autocommit": True, "connect_timeout": 5},
            check=AsyncConnectionPool.check_connection,  # a restarted server: reconnect
            open=False,
            name=f"asgi-attribution-{self.tables.channel}",
        )
        try:
            # One plain connection first: an unreachable server fails at once, with its reason
            # (the pool would retry until its timeout).
            conn = await self._connect_once(psycopg)
            async with conn:
                await self._check_schema(conn)
                await self._check_server(conn)
            await pool.open(wait=True, timeout=10.0)
        except (psycopg.Error, PoolTimeout, OutboxError) as exc:
            await pool.close()
            message = str(exc).replace(self.url, _safe_url(self.url))
            raise OutboxError(
                f"cannot use PostgreSQL outbox {self.description}: {message}"
            ) from None
        except BaseException:  # cancelled by the open's bound: leave no pool behind
            await pool.close()
            raise
        self._pool = pool

    async def _connect_once(self, psycopg: Any) -> AsyncConnection[Any]:
        try:
            conn: AsyncConnection[Any] = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=5),
                self.append_timeout,
            )
        except asyncio.TimeoutError:
            raise OutboxError(
                f"no answer within append_timeout ({self.append_timeout:g}s)"
            ) from None
        return conn

    async def _check_schema(self, conn: AsyncConnection[Any]) -> None:
        from ._postgres_schema import SCHEMA_VERSION, schema_version

        found = await schema_version(conn, self.tables)
        if found == SCHEMA_VERSION:
            # A table made before the claim kept the order has no index of unfinished
            # holders: init_schema adds them (the claim's order holds without, only slower).
            names = [name for name, _ddl in self.tables.open_holders()]
            cur = await conn.execute(
                "SELECT count(*) FROM unnest(%s::text[]) AS n WHERE to_regclass(n) IS NULL",
                (names,),
            )
            missing = await cur.fetchone()
            if missing is None or not missing[0]:
                return
            try:
                await init_schema(conn, self.tables.name)
            except OutboxError as exc:  # a role that may not create indexes: still usable
                logger.warning("outbox %s: %s (run: outbox init)", self.description, exc)
            return
        if found is None and not self.create:
            raise OutboxError(f"no outbox table {self.tables.name} (create it: outbox init)")
        await init_schema(conn, self.tables.name)

    async def _check_server(self, conn: AsyncConnection[Any]) -> None:
        before = time.monotonic()
        cur = await conn.execute(
            "SELECT extract(epoch FROM clock_timestamp())::float8,"
            " current_setting('fsync'), current_setting('synchronous_commit')"
        )
        row = await cur.fetchone()
        assert row is not None
        clock, fsync, synchronous = row
        self._offset = float(clock) - (before + time.monotonic()) / 2
        problems = []
        if fsync != "on":
            problems.append("the server runs with fsync = off: a crash of its host loses commits")
        if synchronous == "off":
            problems.append(
                "synchronous_commit = off: a crash of the server loses the last commits"
            )
        self.problems = tuple(problems)
        self.durable = not problems
        for problem in problems:
            logger.warning("outbox %s: %s; appends report durable=False", self.description, problem)

    def now(self) -> float:
        """The store's clock: the database server's, read at open and carried on by
        ``time.monotonic()``, so a stepped or skewed clock on this host changes nothing."""
        return time.monotonic() + self._offset

    async def close(self) -> None:
        """Finish pending appends, stop listening, close the pool."""
        await self._batcher.wait()
        await self._listener.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _connection(self, timeout: float = 30.0) -> Any:
        if self._pool is None:
            raise OutboxError(f"outbox {self.description} is not open")
        return self._pool.connection(timeout=timeout)

    async def execute(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one autocommit statement on a pooled connection; its rows (if any)."""
        psycopg = require_psycopg()
        try:
            async with self._connection() as conn:
                cur = await conn.execute(sql, params)
                return list(await cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise OutboxError(f"{self.description}: {exc}") from exc

    # -- appends -------------------------------------------------------------------------------

    async def append(self, row: OutboxRow) -> None:
        """Insert a pending row in its own transaction, within ``append_timeout`` seconds;
        concurrent appends share one commit."""
        if self._pool is None or self._loop is not asyncio.get_running_loop():
            await self.open()
        # Bounded by the batcher's timer: a row still queued is withdrawn, one whose write
        # left raises AppendUnconfirmed, which says later whether the write committed.
        await self._batcher.add(row)

    async def _append_many(self, rows: list[OutboxRow]) -> None:
        psycopg = require_psycopg()
        # Past this moment (the database's clock) the transaction stores nothing: the write
        # reached a hung or stopped server after its callers' copies went to the fallback.
        deadline = self.now() + self.append_timeout
        try:
            async with (
                self._connection(self.append_timeout) as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                await cur.execute(
                    "SELECT set_config('statement_timeout', %s, true),"
                    " clock_timestamp() <= to_timestamp(%s)",
                    (f"{max(1, int(self.append_timeout * 1000))}ms", deadline),
                )
                found = await cur.fetchone()
                if not found or not found[1]:
                    raise OutboxError(
                        f"{self.description}: the write reached the server after its"
                        f" append_timeout ({self.append_timeout:g}s): not stored"
                    )
                await cur.executemany(self.tables.insert(), [db_values(r) for r in rows])
        except psycopg.Error as exc:
            raise OutboxError(f"{self.description}: {exc}") from exc

    def check_within(self) -> None:
        """Pass: a PostgreSQL outbox joins the caller's transaction in the same database.

        Example:
            >>> PostgresOutbox("postgresql://localhost/app").check_within()
        """

    async def append_within(self, row: OutboxRow, connection: object) -> None:
        """Insert ``row`` on ``connection``, in the caller's open transaction (see
        :func:`append_within`): the caller's commit stores it and wakes the workers."""
        if self._pool is None or self._loop is not asyncio.get_running_loop():
            await self.open()  # the table must exist; never create it in the caller's transaction
        conn = await caller_connection(connection)
        # Bounded by the server: a lock the insert waits for (a table locked by another
        # session) or a slow disk cancels it after append_timeout; the caller's own
        # statement_timeout comes back after the insert (on failure, their rollback undoes it).
        limit = f"{max(1, int(self.append_timeout * 1000))}ms"
        if _is_asyncpg(conn):
            await self._insert_asyncpg(conn, row, limit)
            return
        psycopg = require_psycopg()
        try:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT current_setting('statement_timeout'),"
                    " set_config('statement_timeout', %s, true)",
                    (limit,),
                )
                found = await cur.fetchone()
                await cur.execute(self.tables.insert(), db_values(row))
                await cur.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    (found[0] if found else "0",),
                )
        except psycopg.Error as exc:
            canceled = isinstance(exc, psycopg.errors.QueryCanceled)
            raise self._not_inserted(row, exc, canceled=canceled) from exc

    async def _insert_asyncpg(self, conn: Any, row: OutboxRow, limit: str) -> None:
        asyncpg: Any = sys.modules["asyncpg"]  # imported: conn is one of its connections
        # The same three statements as with psycopg; the NOTIFY trigger fires at the commit.
        try:
            found = await conn.fetchrow(
                "SELECT current_setting('statement_timeout'),"
                " set_config('statement_timeout', $1, true)",
                limit,
            )
            await conn.execute(_numbered(self.tables.insert()), *db_values(row))
            await conn.execute(
                "SELECT set_config('statement_timeout', $1, true)", found[0] if found else "0"
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            canceled = isinstance(exc, asyncpg.QueryCanceledError)
            raise self._not_inserted(row, exc, canceled=canceled) from exc

    def _not_inserted(self, row: OutboxRow, exc: Exception, *, canceled: bool) -> OutboxError:
        if canceled:
            return OutboxError(
                f"{self.description}: event {row.event_id} not inserted within append_timeout"
                f" ({self.append_timeout:g}s): {exc}; roll back your transaction"
            )
        return OutboxError(
            f"{self.description}: event {row.event_id} not inserted: {exc}; roll back"
            " your transaction"
        )

    # -- claims and outcomes -------------------------------------------------------------------

    async def claim(self, limit: int, lease: float) -> list[OutboxRow]:
        """Lease up to ``limit`` due rows (``FOR UPDATE SKIP LOCKED``); when none is due, wait
        up to ``notify_wait`` seconds for a ``NOTIFY`` (or the next due time) and look again."""
        if self.notify_wait > 0:
            self._listener.start()
            self._listener.clear()
        await self.maintain()
        rows = await self._claim(limit, lease)
        if rows or self.notify_wait <= 0:
            return rows
        wait = self.notify_wait
        found = await self.execute(
            f"SELECT extract(epoch FROM least("
            f"(SELECT min(next_attempt_at) FROM {self.tables.table} WHERE state = 'pending'),"
            f"(SELECT min(lease_until) FROM {self.tables.table} WHERE state = 'inflight'))"
            " - now())::float8"
        )
        if found and found[0][0] is not None:
            wait = min(wait, max(0.0, float(found[0][0])))
        woken = await self._listener.wait(wait)
        if not woken and wait >= self.notify_wait:
            return []  # nothing came, and nothing falls due meanwhile
        return await self._claim(limit, lease)

    async def _claim(self, limit: int, lease: float) -> list[OutboxRow]:
        t, lease_sql = self.tables.table, SECONDS.replace("%s", "%(lease)s")
        held = self.tables.held("o")  # a row behind an unfinished holder of its key waits
        picked = await self.execute(
            f"""WITH expired AS (
                SELECT id FROM {t} AS o WHERE state = 'inflight' AND lease_until <= now()
                AND NOT {held} ORDER BY lease_until LIMIT %(n)s FOR UPDATE SKIP LOCKED
            ), due AS (
                SELECT id FROM {t} AS o WHERE state = 'pending' AND next_attempt_at <= now()
                AND NOT {held} ORDER BY next_attempt_at, id LIMIT %(n)s FOR UPDATE SKIP LOCKED
            ), picked AS (
                SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT %(n)s
            )
            UPDATE {t} SET state = 'inflight', lease_until = now() + {lease_sql},
                lease_owner = %(owner)s, attempts = attempts + 1,
                first_attempt_at = COALESCE(first_attempt_at, now()), updated_at = now()
            FROM picked WHERE {t}.id = picked.id
            RETURNING {COLUMNS.replace("id,", f"{t}.id,", 1)}""",
            {"n": limit, "lease": lease, "owner": self.worker},
        )
        now = self.now()
        return sorted((row_from_db(r, now) for r in picked), key=lambda r: r.next_attempt_at)

    async def _outcome(self, sql: str, params: tuple[Any, ...], row: OutboxRow) -> None:
        # Recorded only by the claim that is still current: same owner and same attempt.
        await self.execute(
            f"UPDATE {self.tables.table} SET {sql}, lease_until = NULL, lease_owner = NULL,"
            " updated_at = now() WHERE id = %s AND state = 'inflight' AND lease_owner = %s"
            " AND attempts = %s",
            (*params, int(row.handle), self.worker, row.attempts),
        )

    async def delivered(self, row: OutboxRow) -> None:
        """Mark a claimed row delivered (ignored if our lease was taken over)."""
        await self._outcome(
            "state = 'delivered', last_error = NULL, error_code = NULL, outcome = %s,"
            " outcome_reason = %s",
            (row.outcome, row.outcome_reason),
            row,
        )

    async def retry_later(self, row: OutboxRow, at: float, error: str) -> None:
        """Back to pending, due ``at`` (store time): ``now() + (at - self.now())`` seconds."""
        delay = max(0.0, at - self.now())
        await self._outcome(
            f"state = 'pending', next_attempt_at = now() + {SECONDS}, last_error = %s,"
            " error_code = %s",
            (delay, error, row.error_code),
            row,
        )

    async def dead(self, row: OutboxRow, error: str) -> None:
        """Keep as a dead letter with its last error."""
        await self._outcome(
            "state = 'dead', last_error = %s, error_code = %s", (error, row.error_code), row
        )

    async def release(self, rows: Sequence[OutboxRow]) -> None:
        """Back to pending at once (the interrupted attempt is not counted); wake the others."""
        if not rows:
            return
        t = self.tables.table
        await self.execute(
            f"WITH back AS (UPDATE {t} SET state = 'pending', attempts = GREATEST(attempts - 1, 0),"
            " lease_until = NULL, lease_owner = NULL, next_attempt_at = now(), updated_at = now()"
            " WHERE id = ANY(%s) AND state = 'inflight' AND lease_owner = %s RETURNING 1)"
            " SELECT pg_notify(%s, '') FROM (SELECT count(*) AS n FROM back) c WHERE n > 0",
            ([int(r.handle) for r in rows], self.worker, self.tables.channel),
        )
