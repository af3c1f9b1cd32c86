"""The embedded outbox: one SQLite file (stdlib ``sqlite3``, WAL mode, JSON rows).

Several processes on one machine may share the file: every write is a short ``BEGIN IMMEDIATE``
transaction, claims carry a lease owner and expiry, and outcomes are recorded only by the
claimant whose lease is still current. All SQLite calls run on one dedicated thread per store, so
the event loop never waits on the disk; appends arriving together share one commit.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..._exceptions import OutboxError
from .store import STATES, AppendBatcher, OutboxRow, OutboxStatus, OutboxStore

__all__ = ["SQLiteOutbox"]

T = TypeVar("T")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until REAL,
    lease_owner TEXT,
    last_error TEXT,
    first_attempt_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
"""
COLUMNS = (
    "id, event_id, provider, kind, event, state, attempts, next_attempt_at, last_error, "
    "created_at, updated_at, first_attempt_at"
)
DUE = (
    "(state = 'pending' AND next_attempt_at <= :now)"
    " OR (state = 'inflight' AND lease_until <= :now)"
)


class SQLiteOutbox(OutboxStore):
    """An outbox in one SQLite file, safe to share between processes on one machine.

    ``path`` is created (with its table) on first use unless ``create=False`` (the CLI uses that,
    so a typo is an error rather than a new empty file). ``synchronous="FULL"`` (the default)
    makes every commit survive a power cut; ``"NORMAL"`` survives a process crash only and
    writes faster. ``busy_timeout`` is how long a write waits for another process's lock.

    Example:
        >>> store = SQLiteOutbox("/var/lib/myapp/events.db")
        >>> tracker = Tracker("dub", api_key="dub_xxx", outbox=store)
        >>> store.path.name  # nothing is opened before the tracker starts
        'events.db'
    """

    option_prefixes = ("",)  # open_store: any value that is no URL of another store

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float = 30.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.path = Path(path)
        self.create = create
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.description = str(self.path)
        # Identifies this store's claims, so a worker whose lease was taken over cannot record.
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._batcher = AppendBatcher(self._append_many)

    def __repr__(self) -> str:
        return f"SQLiteOutbox({self.description!r})"

    # -- plumbing ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise OutboxError(f"outbox {self.description} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.description}: {exc}") from exc

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        assert conn is not None
        # IMMEDIATE takes the write lock up front, so two processes never both read "due" and
        # then both claim: the second waits (busy_timeout) and sees the first one's claim.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT (disk full, I/O error): a connection left inside a
            # transaction would refuse every later write.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def open(self) -> None:
        """Open (creating if allowed) the file, switch to WAL, check or create the table."""
        if self._executor is not None:
            return
        # The one thread that ever touches this connection; created here, not at import/fork.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="asgi-attribution-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _connect(self) -> None:
        path = self.path
        if not self.create and not path.is_file():
            reason = "a directory, not a file" if path.is_dir() else "file not found"
            raise OutboxError(f"no outbox at {path}: {reason}")
        try:
            if self.create:
                conn = sqlite3.connect(path, timeout=self.busy_timeout, isolation_level=None)
            else:
                uri = path.resolve().as_uri() + "?mode=rw"
                conn = sqlite3.connect(
                    uri, uri=True, timeout=self.busy_timeout, isolation_level=None
                )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{path}: cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            if self.create:
                conn.executescript(SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            else:
                found = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
                ).fetchone()
                if found is None:
                    raise OutboxError(f"{path} is not an asgi-attribution outbox (no outbox table)")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise OutboxError(f"{path} is not a usable SQLite outbox: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        """Finish pending appends, close the connection and stop the thread."""
        await self._batcher.wait()
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    # -- appends, grouped into shared commits -----------------------------------------------

    async def append(self, row: OutboxRow) -> None:
        """Insert a pending row; returns once its transaction is committed."""
        await self._batcher.add(row)

    async def _append_many(self, rows: list[OutboxRow]) -> None:
        await self._run(self._tx, functools.partial(self._insert, rows=rows))

    @staticmethod
    def _insert(conn: sqlite3.Connection, *, rows: list[OutboxRow]) -> None:
        conn.executemany(
            "INSERT INTO outbox (event_id, provider, kind, event, state, attempts,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            [
                (
                    r.event_id,
                    r.provider,
                    r.kind,
                    json.dumps(r.event, separators=(",", ":")),
                    r.next_attempt_at,
                    r.created_at,
                    r.updated_at,
                )
                for r in rows
            ],
        )

    # -- claims and outcomes ------------------------------------------------------------------

    async def claim(self, limit: int, lease: float) -> list[OutboxRow]:
        """Lease up to ``limit`` due rows (pending and due, or in flight with an expired lease)."""
        return await self._run(self._claim, limit, lease)

    def _claim(self, limit: int, lease: float) -> list[OutboxRow]:
        conn = self._conn
        assert conn is not None
        now = time.time()
        # A plain read first: idle workers then never take the write lock.
        if (
            conn.execute(f"SELECT 1 FROM outbox WHERE {DUE} LIMIT 1", {"now": now}).fetchone()
            is None
        ):
            return []

        def claim(conn: sqlite3.Connection) -> list[OutboxRow]:
            now = time.time()
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM outbox WHERE {DUE} ORDER BY next_attempt_at, id LIMIT :limit",
                    {"now": now, "limit": limit},
                )
            ]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            conn.execute(
                "UPDATE outbox SET state = 'inflight', lease_until = ?, lease_owner = ?,"
                " attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, ?),"
                f" updated_at = ? WHERE id IN ({marks})",
                (now + lease, self._owner, now, now, *ids),
            )
            return [
                _row(r)
                for r in conn.execute(
                    f"SELECT {COLUMNS} FROM outbox WHERE id IN ({marks}) ORDER BY next_attempt_at",
                    ids,
                )
            ]

        return self._tx(claim)

    async def _outcome(self, sql: str, params: tuple[Any, ...], row: OutboxRow) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"UPDATE outbox SET {sql}, lease_until = NULL, lease_owner = NULL, updated_at = ?"
                " WHERE id = ? AND state = 'inflight' AND lease_owner = ?",
                (*params, time.time(), int(row.handle), self._owner),
            )

        await self._run(self._tx, update)

    async def delivered(self, row: OutboxRow) -> None:
        """Mark a claimed row delivered (ignored if our lease was taken over)."""
        await self._outcome("state = 'delivered', last_error = NULL", (), row)

    async def retry_later(self, row: OutboxRow, at: float, error: str) -> None:
        """Back to pending, due at ``at``, with its last error."""
        await self._outcome(
            "state = 'pending', next_attempt_at = ?, last_error = ?", (at, error), row
        )

    async def dead(self, row: OutboxRow, error: str) -> None:
        """Keep as a dead letter with its last error."""
        await self._outcome("state = 'dead', last_error = ?", (error,), row)

    async def release(self, rows: Sequence[OutboxRow]) -> None:
        """Back to pending at once; the interrupted attempt is not counted."""

        def update(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET state = 'pending', attempts = MAX(attempts - 1, 0),"
                " lease_until = NULL, lease_owner = NULL, next_attempt_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'inflight' AND lease_owner = ?",
                [(time.time(), time.time(), int(r.handle), self._owner) for r in rows],
            )

        await self._run(self._tx, update)

    # -- inspection and maintenance -----------------------------------------------------------

    async def unfinished(self) -> int:
        """Pending (including scheduled retries) plus in-flight rows."""

        def count() -> int:
            assert self._conn is not None
            query = "SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'inflight')"
            return int(self._conn.execute(query).fetchone()[0])

        return await self._run(count)

    async def status(self) -> OutboxStatus:
        """Counts by state and the age of the oldest pending or in-flight row."""

        def read() -> OutboxStatus:
            assert self._conn is not None
            counts: dict[str, int] = dict.fromkeys(STATES, 0)
            for state, n in self._conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
                counts[state] = n
            oldest = self._conn.execute(
                "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'inflight')"
            ).fetchone()[0]
            age = None if oldest is None else max(0.0, time.time() - oldest)
            return OutboxStatus(counts, age)

        return await self._run(read)

    async def list_dead(self, limit: int = 100) -> list[OutboxRow]:
        """Dead letters, oldest first."""

        def read() -> list[OutboxRow]:
            assert self._conn is not None
            query = f"SELECT {COLUMNS} FROM outbox WHERE state = 'dead' ORDER BY id LIMIT ?"
            return [_row(r) for r in self._conn.execute(query, (limit,))]

        return await self._run(read)

    async def retry_dead(self, event_ids: Sequence[str] | None = None) -> int:
        """Dead letters back to pending, with a fresh budget of attempts and time."""

        def update(conn: sqlite3.Connection) -> int:
            now = time.time()
            sql = (
                "UPDATE outbox SET state = 'pending', attempts = 0, first_attempt_at = NULL,"
                " next_attempt_at = ?, updated_at = ? WHERE state = 'dead'"
            )
            if event_ids is None:
                return conn.execute(sql, (now, now)).rowcount
            marks = ",".join("?" * len(event_ids))
            return conn.execute(f"{sql} AND event_id IN ({marks})", (now, now, *event_ids)).rowcount

        return await self._run(self._tx, update)

    async def purge_delivered(self, older_than: float) -> int:
        """Delete delivered rows last updated more than ``older_than`` seconds ago."""

        def delete(conn: sqlite3.Connection) -> int:
            cutoff = time.time() - older_than
            sql = "DELETE FROM outbox WHERE state = 'delivered' AND updated_at <= ?"
            return conn.execute(sql, (cutoff,)).rowcount

        return await self._run(self._tx, delete)


def _row(r: tuple[Any, ...]) -> OutboxRow:
    (
        rid,
        event_id,
        provider,
        kind,
        event,
        state,
        attempts,
        next_at,
        error,
        created,
        updated,
        first,
    ) = r
    return OutboxRow(
        event_id=event_id,
        provider=provider,
        kind=kind,
        event=json.loads(event),
        state=state,
        attempts=attempts,
        next_attempt_at=next_at,
        last_error=error,
        created_at=created,
        updated_at=updated,
        first_attempt_at=first,
        handle=str(rid),
    )
