"""The SQLite outbox's threads and transactions: one connection per thread, short writes.

:class:`Worker` owns one thread and the one connection it ever touches; :meth:`Worker.tx` runs
a function inside ``BEGIN IMMEDIATE``. The multi-row writes of :mod:`.sqlite` are here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..._exceptions import OutboxError
from ...jsoncodec import dumps
from .rows import RETRY_REFUSED, OutboxRow

__all__ = [
    "WAL_RESTART_FRAMES",
    "Worker",
    "checkpoint",
    "commit_now",
    "insert_rows",
    "locked",
    "retry_dead_rows",
]

logger = logging.getLogger("asgi_attribution")
T = TypeVar("T")
#: WAL frames (pages: 4 KiB each) past which a checkpoint holds writers off to restart it.
WAL_RESTART_FRAMES = 4096


class Worker:
    """One thread and its SQLite connection, which waits ``busy_timeout`` seconds for a lock.

    Example:
        >>> import asyncio, os, tempfile
        >>> async def answer():
        ...     worker = Worker("example", busy_timeout=1.0)
        ...     path = Path(tempfile.mkdtemp()) / "x.db"
        ...     await worker.run(worker.connect, path, True)
        ...     try:
        ...         answer = lambda conn: conn.execute("SELECT 42").fetchone()[0]
        ...         return await worker.run(worker.tx, answer)
        ...     finally:
        ...         await worker.close()
        >>> asyncio.run(answer())
        42
    """

    def __init__(self, name: str, busy_timeout: float) -> None:
        self.busy_timeout = busy_timeout
        self.conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this worker's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on this worker's thread, without waiting for it."""
        self._executor.submit(fn, *args)

    def connect(self, path: Path, create: bool) -> sqlite3.Connection:
        """Open the connection (on this thread); ``create=False`` needs an existing file."""
        try:
            if create:
                conn = sqlite3.connect(path, timeout=self.busy_timeout, isolation_level=None)
            else:
                uri = path.resolve().as_uri() + "?mode=rw"
                conn = sqlite3.connect(
                    uri, uri=True, timeout=self.busy_timeout, isolation_level=None
                )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from None
        self.conn = conn
        return conn

    def disconnect(self) -> None:
        """Close the connection (on this thread)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction (on this thread)."""
        conn = self.conn
        if conn is None:
            raise OutboxError("the outbox is closed")
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

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        await self.run(self.disconnect)
        self._executor.shutdown(wait=True)


def locked(error: sqlite3.OperationalError) -> bool:
    """True when ``error`` says another connection holds the lock (SQLITE_BUSY, LOCKED).

    Example:
        >>> locked(sqlite3.OperationalError("database is locked"))
        True
    """
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return "locked" in str(error) or "busy" in str(error)


def commit_now(conn: sqlite3.Connection, rows: list[OutboxRow]) -> bool:
    """Insert ``rows`` in one transaction that never waits: False when another writer holds
    the lock (``conn`` has ``busy_timeout = 0``), True once committed."""
    if len(rows) == 1 and not conn.in_transaction:
        # One statement is its own transaction: a third of the calls into SQLite of a
        # BEGIN/INSERT/COMMIT, for the commonest append (a lone signup).
        try:
            conn.execute(INSERT, _values(rows[0]))
        except sqlite3.OperationalError as exc:
            if locked(exc):
                return False
            raise
        return True
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if locked(exc):
            return False
        raise
    try:
        insert_rows(conn, rows=rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT (disk full) too
            conn.execute("ROLLBACK")
        raise
    return True


def checkpoint(worker: Worker) -> None:
    """Copy the WAL into the database file (on ``worker``'s thread); a failure leaves a longer
    WAL for the next one.

    PASSIVE, which never holds off a writer: between signups it copies the whole WAL and the
    next commit starts it again from its beginning. Appends arriving without a pause can keep
    it from ever finishing, so past ``WAL_RESTART_FRAMES`` a RESTART holds writers off (appends
    meanwhile take the thread) until the WAL starts again.
    """
    if worker.conn is None:
        return
    with contextlib.suppress(sqlite3.Error):
        _, frames, _ = worker.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames > WAL_RESTART_FRAMES:
            worker.conn.execute("PRAGMA wal_checkpoint(RESTART)")


# Appends go to outbox_new, moved into the outbox by the worker (see .sqlite_appended).
INSERT = (
    "INSERT INTO outbox_new (event_id, provider, kind, event, next_attempt_at, created_at,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _values(r: OutboxRow) -> tuple[Any, ...]:
    event = dumps(r.event).decode()
    return (r.event_id, r.provider, r.kind, event, r.next_attempt_at, r.created_at, r.updated_at)


def insert_rows(conn: sqlite3.Connection, *, rows: list[OutboxRow]) -> None:
    """Append new rows to outbox_new (moved into the outbox by the store's worker)."""
    conn.executemany(INSERT, [_values(r) for r in rows])


def retry_dead_rows(
    conn: sqlite3.Connection, *, now: float, event_ids: Sequence[str] | None, force: bool
) -> int:
    """Dead letters back to pending with a fresh budget; refused codes stay unless ``force``."""
    where, params = "state = 'dead'", list[Any]()
    if event_ids is not None:
        where += f" AND event_id IN ({','.join('?' * len(event_ids))})"
        params.extend(event_ids)
    if not force:
        refused = conn.execute(
            f"SELECT event_id, error_code FROM outbox WHERE {where} AND error_code IN"
            f" ({','.join('?' * len(RETRY_REFUSED))})",
            [*params, *RETRY_REFUSED],
        ).fetchall()
        for event_id, code in refused:
            logger.warning(
                "dead letter %s not retried (%s): %s", event_id, code, RETRY_REFUSED[code]
            )
        where += (
            f" AND (error_code IS NULL OR error_code NOT IN ({','.join('?' * len(RETRY_REFUSED))}))"
        )
        params.extend(RETRY_REFUSED)
    return conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, first_attempt_at = NULL,"
        f" next_attempt_at = ?, updated_at = ? WHERE {where}",
        (now, now, *params),
    ).rowcount
