"""The embedded outbox: one SQLite file (stdlib ``sqlite3``, WAL mode, JSON rows).

Several processes on one machine may share the file. Every write is a short ``BEGIN IMMEDIATE``
transaction on a connection owned by one thread (:class:`Worker`); claims carry a lease owner
and expiry, and an outcome is recorded only by the claimant whose lease is still current.

An append is one ``INSERT`` into ``outbox``, whose unique event id keeps the first row of an id
(an event appended twice is stored and delivered once). Appends arriving together share one
commit. With ``synchronous="normal"`` (the default) a commit writes the WAL without fsync,
which costs less than handing it to a thread: the appends of one loop iteration are committed
on the loop, on a connection that never waits for a lock (another writer holding it sends them
to the thread instead) and never checkpoints (the store's thread does, every
``CHECKPOINT_EVERY`` commits). Everything else runs on the store's own threads: appends that
wait ``append_timeout`` at most for another process's lock (a signup is never held longer),
workers that wait ``busy_timeout``. An append that fails (a full disk, a lock held too long)
raises :class:`OutboxError`: the transport then hands the event to its fallback.

The store knows its file, and stops taking appends (they raise: the fallback takes them) once
it is not what it was. After each append commit and at each claim the path's device and inode
are compared with the file opened: a deleted or replaced file's rows are still delivered by
this process. Damage (``PRAGMA quick_check`` at open, or any read or write) turns reads to row
ids: readable rows are delivered (those that cannot be written in place through
``outbox_salvage``), unreadable ones named in ``status()``. I/O errors (a failing disk) make
the shutdown name by id what is left, never promise it. Outcomes a full disk refused are
written before the next claim. The operator's side (counts, listing by state, dead-letter
retries, retention in small batches, VACUUM) reads and writes the same table. The file's
schema, clock, health and salvage are in :mod:`._sqlite_schema`. One concept, long as it is:
the store of one file, whose every path (append, claim, outcome, status) must agree on what
the file can still be trusted with.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..._exceptions import OutboxError
from ..._json import dumps
from .._base import log_ids
from ._sqlite_schema import (
    COLUMNS,
    AnchoredClock,
    FileId,
    Scan,
    WallClock,
    check_health,
    claim_salvaged,
    count_scan,
    damaged,
    describe_ids,
    due_ids,
    failing,
    file_id,
    list_by_id,
    load_clock,
    move_claim,
    note_time,
    prepare,
    read_live,
    salvaged_states,
    scan,
    summarize,
    to_row,
)
from ._store import (
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
    "CHECKPOINT_EVERY",
    "INSERT",
    "WAL_RESTART_FRAMES",
    "SQLiteOutbox",
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

#: Commits made on the loop between two checkpoints of the WAL on the store's thread.
CHECKPOINT_EVERY = 200

DAY = 86_400.0

_UNFINISHED = ("pending", "inflight")


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


# An event id already stored keeps its row: the append of a copy is stored all the same.
INSERT = (
    "INSERT INTO outbox (event_id, provider, kind, event, next_attempt_at, created_at,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)


def _values(r: OutboxRow) -> tuple[Any, ...]:
    event = dumps(r.event).decode()
    return (r.event_id, r.provider, r.kind, event, r.next_attempt_at, r.created_at, r.updated_at)


def insert_rows(conn: sqlite3.Connection, *, rows: list[OutboxRow]) -> None:
    """Insert new pending rows (an event id already stored keeps its row)."""
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


#: Event ids this process appended and has not seen delivered, kept to name them if the disk
#: fails: at most this many (past it, they are counted).
MINE_LIMIT = 100_000


class SQLiteOutbox(OutboxStore):
    """An outbox in one SQLite file, safe to share between processes on one machine.

    ``path`` is created (with its table) on first use unless ``create=False`` (the CLI uses that,
    so a typo is an error rather than a new empty file). ``synchronous="normal"`` (the default,
    WAL without fsync per commit) survives a crash, kill or restart of the process and an OOM
    kill, but an OS crash or a power cut can lose the last commits; ``"full"`` fsyncs every
    commit and survives those too, at several times the cost per signup.
    ``append_timeout`` bounds an append's wait for another process's write lock (default
    2 s); ``busy_timeout`` is how long a worker's write waits (30 s). Delivered rows
    are kept ``retention`` seconds (7 days) and then removed ``purge_batch`` rows per
    transaction. ``clock`` is the wall clock (tests inject a stepped one): it is read to anchor
    the store's clock, never to schedule.

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
        synchronous: Literal["normal", "full", "NORMAL", "FULL"] = "normal",
        busy_timeout: float = 30.0,
        append_timeout: float = 2.0,
        retention: float = 7 * DAY,
        purge_batch: int = 500,
        clock: WallClock = time.time,
    ) -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        if append_timeout <= 0 or busy_timeout <= 0 or retention < 0 or purge_batch < 1:
            raise ValueError(
                "append_timeout and busy_timeout must be > 0, retention >= 0, purge_batch >= 1"
            )
        self.path = Path(path)
        self.create = create
        #: "NORMAL" or "FULL", as SQLite spells it.
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self.append_timeout = append_timeout
        self.retention = retention
        self.purge_batch = purge_batch
        self.wall = clock
        self.description = self._where = str(self.path)  # _where: the path, as os.stat takes it
        #: What is wrong with the file (damage found at open, a deleted file); see ``status``.
        self.problems: builtins.list[str] = []
        # Rows set aside (row id -> event id, when known): unreadable, or not writable.
        self._aside: dict[int, str | None] = {}
        # Damage seen (at open or by any read or write), and a disk seen failing: either one
        # stops appends, which go to the fallback rather than into a file that cannot keep them.
        self._damage: str | None = None
        self._failing: str | None = None
        # On a damaged file: what a scan by row ids found, and the unfinished row ids it left.
        self._scan: Scan | None = None
        self._open_ids: set[int] = set()
        # Outcomes a full disk refused (row id -> the update): written before the next claim,
        # and their rows never claimed again meanwhile.
        self._owed: dict[int, Callable[[sqlite3.Connection], None]] = {}
        # Event ids appended by this process and not delivered by it (named if the disk fails).
        self._mine: dict[str, None] = {}
        self._mine_over = 0
        # Identifies this store's claims, so a worker whose lease was taken over cannot record.
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._clock: AnchoredClock | None = None
        self._identity: FileId | None = None
        self._lost: str | None = None
        self._appender: Worker | None = None
        self._worker: Worker | None = None
        #: The connection that commits on the loop (synchronous NORMAL only), and its lock:
        #: a loop on another thread (asyncio.run per job) may append at the same time.
        self._now: sqlite3.Connection | None = None
        self._now_lock = threading.Lock()
        self._commits_now = 0
        self.append_bound = append_timeout + 0.25  # one timer per batch, not per signup
        self._batcher = AppendBatcher(
            self._append_many,
            write_now=self._write_now if self.synchronous == "NORMAL" else None,
            timeout=self.append_bound,
        )

    def __repr__(self) -> str:
        return f"SQLiteOutbox({self.description!r})"

    def now(self) -> float:
        """The file's clock: anchored to ``time.monotonic()`` and shared by every process."""
        if self._clock is None:
            return self.wall()
        return self._clock.now()

    # -- plumbing ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, appending: bool = False) -> T:
        worker = self._appender if appending else self._worker
        if worker is None:
            raise OutboxError(f"outbox {self.description} is not open")
        try:
            return await worker.run(fn, *args)
        except sqlite3.DatabaseError as exc:
            self._note(exc)
            raise OutboxError(f"{self.description}: {exc}") from exc

    def _tx(self, fn: Callable[[sqlite3.Connection], T], appending: bool = False) -> T:
        worker = self._appender if appending else self._worker
        assert worker is not None
        return worker.tx(fn)

    def _read(self, query: str, params: Sequence[Any]) -> builtins.list[tuple[Any, ...]]:
        """A plain read on the worker's connection (on its thread): no write lock taken."""
        assert self._worker is not None and self._worker.conn is not None
        return self._worker.conn.execute(query, params).fetchall()

    async def open(self) -> None:
        """Open (creating if allowed) the file, switch to WAL, check its health and schema."""
        if self._worker is not None:
            return
        # Threads created here, not at import or fork; one connection per thread.
        worker = Worker("asgi-attribution-sqlite", self.busy_timeout)
        appender = Worker("asgi-attribution-sqlite-append", self.append_timeout)
        try:
            await worker.run(self._connect, worker)
            await appender.run(self._connect_appender, appender)
        except BaseException:
            await worker.close()
            await appender.close()
            raise
        self._worker, self._appender, self._lost = worker, appender, None

    def _connect(self, worker: Worker) -> None:
        path = self.path
        if not self.create and not path.is_file():
            reason = "a directory, not a file" if path.is_dir() else "file not found"
            raise OutboxError(f"no outbox at {path}: {reason}")
        conn = worker.connect(path, create=self.create)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{path}: cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self.problems = check_health(conn)
            self._aside, self._damage, self._failing, self._scan = {}, None, None, None
            if self.problems:
                self._damage = self.problems[0]
                self._rescan(conn)
            prepare(conn, path, self.create)
            self._clock = load_clock(conn, self.wall)
            self._identity = file_id(path)
        except sqlite3.DatabaseError as exc:
            worker.disconnect()
            raise OutboxError(f"{path} is not a usable SQLite outbox: {exc}") from None
        except BaseException:
            worker.disconnect()
            raise
        if self._damage is not None:
            logger.error(
                "outbox %s is damaged: %s; %s. Its readable rows are delivered; new events go "
                "to the fallback, not into this file",
                path,
                self._damage,
                self._aside_summary() or "every row is readable",
            )
        self._clock.check(self.description)

    def _connect_appender(self, appender: Worker) -> None:
        conn = appender.connect(self.path, create=False)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        if self.synchronous == "NORMAL":
            now = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # Never waits on the loop: a held lock sends the rows to the appender's thread.
            now.execute("PRAGMA busy_timeout = 0")
            now.execute("PRAGMA synchronous = NORMAL")
            # A checkpoint fsyncs the database file: the appender's thread runs them.
            now.execute("PRAGMA wal_autocheckpoint = 0")
            self._now = now

    async def close(self) -> None:
        """Finish pending appends, close the connections and stop the threads."""
        await self._batcher.wait()
        appender, worker = self._appender, self._worker
        self._appender = self._worker = None
        with self._now_lock:
            now, self._now = self._now, None
        if now is not None:
            now.close()
        for each in (appender, worker):
            if each is not None:
                await each.close()

    # -- the file's identity --------------------------------------------------------------

    def _check_file(self) -> None:
        """Raise (and log at ERROR, once) if the path no longer holds the file opened."""
        if self._lost is None and file_id(self._where) != self._identity:
            self._lost = (
                f"outbox file {self.path} was deleted or replaced while open: appends stop "
                "(nothing more is reported stored); rows already in it are delivered by this "
                "process while it runs. Restart the process to open the file at the path"
            )
            self.problems.append(self._lost)
            logger.error("%s", self._lost)
        if self._lost is not None:
            raise OutboxError(self._lost)

    @property
    def is_open(self) -> bool:
        """True between ``open`` and ``close``."""
        return self._worker is not None

    @property
    def lost(self) -> bool:
        """True once the file at the path is not the one this store opened."""
        return self._lost is not None

    # -- damage and a failing disk ----------------------------------------------------------

    @property
    def unreadable(self) -> builtins.list[int]:
        """Ids of the rows set aside: unreadable (at open, or by a claim), or not writable."""
        return builtins.list(self._aside)

    def _note(self, error: sqlite3.DatabaseError) -> None:
        """Remember damage or a failing disk that ``error`` shows (logged once each)."""
        if damaged(error) and self._damage is None:
            self._damage = f"damaged: {error}"
            self._scan = None  # scanned by the next claim or status, on the worker's thread
            self.problems.append(self._damage)
            why = "readable rows delivered, unreadable ones named in status; new events to fallback"
            logger.error("outbox %s is damaged (%s): %s", self.description, error, why)
        elif failing(error) and self._failing is None:
            self._failing = f"the disk failed: {error}"
            self.problems.append(self._failing)
            why = "new events go to the fallback; those left in the file are named at shutdown"
            logger.error("outbox %s: %s; %s", self.description, error, why)

    def _refuse_appends(self) -> None:
        why = self._damage or self._failing
        if why is not None:
            raise OutboxError(f"outbox {self.description} takes no new events ({why})")

    def _set_aside(self, rid: int, event_id: str | None, why: str) -> None:
        if rid not in self._aside:
            self._aside[rid] = event_id
            name = event_id or "unknown"
            logger.error(
                "outbox %s: row %d (event %s) set aside: %s", self.description, rid, name, why
            )

    def _aside_summary(self) -> str | None:
        guessed = self._scan is not None and self._scan.guessed
        return summarize(self._aside, guessed)

    def _rescan(self, conn: sqlite3.Connection) -> Scan:
        """Read a damaged file by ranges of row ids (on the worker's thread)."""
        found = scan(conn)
        self._scan = found
        self._open_ids = {i for i, (_, state, _) in found.rows.items() if state in _UNFINISHED}
        for rid, event_id in found.unreadable.items():
            self._aside.setdefault(rid, event_id)
        return found

    def _live(self, conn: sqlite3.Connection) -> builtins.list[tuple[Any, ...]]:
        """(id, state, next_attempt_at, lease_until) of the unfinished rows of a damaged file,
        read by row id: no read goes through an index or a damaged page of another row."""
        found = self._scan if self._scan is not None else self._rescan(conn)
        with contextlib.suppress(sqlite3.DatabaseError):  # rows appended since the scan
            query = "SELECT id FROM outbox NOT INDEXED WHERE id > ?"
            for (rid,) in conn.execute(query, (found.top,)).fetchall():
                self._open_ids.add(rid)
                found.top = max(found.top, rid)
        ids = sorted(self._open_ids.difference(self._aside, self._owed))
        live, failed = read_live(conn, ids)
        for rid, why in failed.items():
            self._set_aside(rid, found.rows.get(rid, (None,))[0], f"unreadable: {why}")
        self._open_ids.difference_update(ids)
        unfinished = [r for r in live if r[1] in _UNFINISHED]
        self._open_ids.update(r[0] for r in unfinished)
        return unfinished

    def _due(self, conn: sqlite3.Connection, now: float, limit: int) -> builtins.list[int]:
        if self._damage is None:
            try:
                return due_ids(conn, now, limit, [*self._aside, *self._owed])
            except sqlite3.DatabaseError as exc:
                self._note(exc)
                if self._damage is None:
                    raise
        due = [
            (at if state == "pending" else lease, rid)
            for rid, state, at, lease in self._live(conn)
            if (state == "pending" and at <= now) or (state == "inflight" and lease <= now)
        ]
        return [rid for _, rid in sorted(due)[:limit]]

    async def name_unconfirmed(self) -> bool:
        """After the disk failed: log at ERROR, by id, the events left that the file may not
        hold (never promised to the next worker); True if it failed, False otherwise."""
        if self._failing is None:
            return False
        ids = dict(self._mine)
        with contextlib.suppress(OutboxError):  # what the file still gives
            query = "SELECT event_id FROM outbox WHERE state IN ('pending', 'inflight')"
            ids.update(dict.fromkeys(r[0] for r in await self._run(self._read, query, ())))
        more = f" (and {self._mine_over} more this process stored, past the {MINE_LIMIT} it names)"
        head = (
            f"{len(ids)} events left in the outbox {self.description}{more * bool(self._mine_over)}"
            f" are not confirmed ({self._failing}): the file may not hold them; send again the"
            " ones it lost"
        )
        log_ids(logging.ERROR, head, builtins.list(ids))
        return True

    # -- appends, grouped into shared commits -----------------------------------------------

    async def append(self, row: OutboxRow) -> None:
        """Insert a pending row; returns once its transaction is committed in the file at the
        path (raises :class:`OutboxError` otherwise, also when the lock wait passes
        ``append_timeout``)."""
        await self._batcher.add(row)

    async def _append_many(self, rows: builtins.list[OutboxRow]) -> None:
        await self._run(self._write_rows, rows, appending=True)

    def _write_rows(self, rows: builtins.list[OutboxRow]) -> None:
        self._refuse_appends()
        self._check_file()
        self._tx(functools.partial(insert_rows, rows=rows), appending=True)
        assert self._appender is not None and self._appender.conn is not None
        self._committed(self._appender.conn, rows)

    def _committed(self, conn: sqlite3.Connection, rows: builtins.list[OutboxRow]) -> None:
        """After a commit: rows that went to a file deleted or replaced meanwhile are withdrawn
        from it (and raise); the others are this process's to name if the disk fails."""
        try:
            self._check_file()
        except OutboxError:
            # Reported not stored (the fallback sends them): neither delivered from the old
            # file too, nor counted among the rows left in it.
            with contextlib.suppress(sqlite3.Error):
                conn.executemany(
                    "DELETE FROM outbox WHERE state = 'pending' AND event_id = ?"
                    " AND created_at = ?",  # not an earlier row of the same event id
                    [(r.event_id, r.created_at) for r in rows],
                )
            raise
        if len(self._mine) < MINE_LIMIT:
            self._mine.update(dict.fromkeys(r.event_id for r in rows))
        else:
            self._mine_over += len(rows)

    def _write_now(self, rows: builtins.list[OutboxRow]) -> bool:
        """Commit ``rows`` on the calling (loop) thread, or False: take the appender's thread."""
        if not self._now_lock.acquire(blocking=False):
            return False  # another loop is committing on it
        try:
            conn = self._now
            if conn is None:
                return False
            self._refuse_appends()
            if self._lost is not None:
                self._check_file()  # raises
            # The file is checked after the commit only: rows committed to a file deleted
            # before are reported not stored all the same (and withdrawn from it).
            try:
                if not commit_now(conn, rows):
                    return False  # another writer: the thread waits for it, the loop does not
            except sqlite3.DatabaseError as exc:
                self._note(exc)
                raise OutboxError(f"{self.description}: {exc}") from exc
            self._committed(conn, rows)
        finally:
            self._now_lock.release()
        self._commits_now += 1
        appender = self._appender
        if self._commits_now % CHECKPOINT_EVERY == 0 and appender is not None:
            # Fire and forget: a failed checkpoint leaves a longer WAL, the next one retries;
            # a store closing meanwhile (from another thread's loop) has no thread to take it.
            with contextlib.suppress(RuntimeError):
                appender.submit(checkpoint, appender)
        return True

    # -- claims and outcomes ------------------------------------------------------------------

    async def claim(self, limit: int, lease: float) -> builtins.list[OutboxRow]:
        """Lease up to ``limit`` due rows (pending and due, or in flight with an expired lease)."""
        return await self._run(self._claim, limit, lease)

    def _claim(self, limit: int, lease: float) -> builtins.list[OutboxRow]:
        assert self._worker is not None and self._worker.conn is not None
        assert self._clock is not None
        conn = self._worker.conn
        self._clock.check(self.description)
        with contextlib.suppress(OutboxError):  # logged; deliver what the open file holds
            self._check_file()
        self._pay_owed()
        # A plain read first: idle workers then never take the write lock.
        if not self._due(conn, self.now(), 1):
            return []

        def claim(conn: sqlite3.Connection, only: int | None = None) -> builtins.list[OutboxRow]:
            now = self.now()
            ids = [only] if only is not None else self._due(conn, now, limit)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            conn.execute(
                "UPDATE outbox SET state = 'inflight', lease_until = ?, lease_owner = ?,"
                " attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, ?),"
                f" updated_at = ? WHERE id IN ({marks}) AND ((state = 'pending' AND"
                " next_attempt_at <= ?) OR (state = 'inflight' AND lease_until <= ?))",
                (now + lease, self._owner, now, now, *ids, now, now),
            )
            note_time(conn, now)
            query = (
                f"SELECT {COLUMNS} FROM outbox NOT INDEXED WHERE id IN ({marks})"
                " AND lease_owner = ? AND lease_until = ? ORDER BY next_attempt_at"
            )
            return [to_row(r) for r in conn.execute(query, (*ids, self._owner, now + lease))]

        try:
            return self._tx(claim)
        except sqlite3.DatabaseError as exc:
            self._note(exc)
            if not damaged(exc):  # a lock held too long, a full disk: not a damaged row
                raise
        # A damaged file: claim row by row, and set aside (by id) the rows that fail.
        rows: builtins.list[OutboxRow] = []
        names = self._scan.rows if self._scan is not None else {}
        for rid in self._due(conn, self.now(), limit):
            try:
                rows.extend(self._tx(functools.partial(claim, only=rid)))
                continue
            except sqlite3.DatabaseError as exc:
                if not damaged(exc):
                    raise
            # Not writable in place: claimed (and recorded) in outbox_salvage, if readable.
            try:
                claim_one = functools.partial(
                    claim_salvaged, rid=rid, now=self.now(), lease=lease, owner=self._owner
                )
                rows.extend(self._tx(claim_one))
            except (sqlite3.DatabaseError, ValueError) as exc:
                event_id = names[rid][0] if rid in names else None
                self._set_aside(rid, event_id, f"cannot be read or written: {exc}")
        return rows

    def _pay_owed(self) -> None:
        """Write the outcomes a full disk refused (on the worker's thread), oldest first."""
        for rid, update in builtins.list(self._owed.items()):
            try:
                self._tx(update)
            except sqlite3.DatabaseError as exc:
                self._note(exc)
                return  # still refused: the rest waits too
            self._owed.pop(rid, None)

    async def _outcome(self, sql: str, params: tuple[Any, ...], row: OutboxRow) -> None:
        salvaged = row.handle.startswith("s")
        rid = int(row.handle.removeprefix("s"))

        def update(conn: sqlite3.Connection, table: str = "outbox") -> None:
            conn.execute(
                f"UPDATE {table} SET {sql}, lease_until = NULL, lease_owner = NULL,"
                " updated_at = ? WHERE id = ? AND state = 'inflight' AND lease_owner = ?",
                (*params, self.now(), rid, self._owner),
            )

        def salvage(conn: sqlite3.Connection) -> None:
            # Our claim, whose row cannot be written in place: its outcome goes beside it.
            move_claim(conn, row, rid, self.now(), self._owner)
            update(conn, "outbox_salvage")

        write = functools.partial(update, table="outbox_salvage" if salvaged else "outbox")
        try:
            await self._run(self._tx, write)
        except OutboxError as exc:
            cause = exc.__cause__
            if not isinstance(cause, sqlite3.DatabaseError) or (
                isinstance(cause, sqlite3.OperationalError) and locked(cause)
            ):
                raise  # a lock held too long: the delivery loop tries again
            if damaged(cause) and not salvaged:
                try:
                    await self._run(self._tx, salvage)
                except OutboxError as again:
                    # Never claimed again by this process (another may, after the lease).
                    why = f"its outcome cannot be written: {again}"
                    self._set_aside(rid, row.event_id, why)
            else:
                # A full or failing disk: written before the next claim, which skips the row
                # meanwhile (its lease is ours), so it is neither lost nor sent again.
                self._owed[rid] = write
        finally:
            if "'delivered'" in sql or "'dead'" in sql:
                self._mine.pop(row.event_id, None)

    async def delivered(self, row: OutboxRow) -> None:
        """Mark a claimed row delivered with its outcome (ignored if our lease was taken over)."""
        await self._outcome(
            "state = 'delivered', last_error = NULL, error_code = NULL, outcome = ?,"
            " outcome_reason = ?",
            (row.outcome, row.outcome_reason),
            row,
        )

    async def retry_later(self, row: OutboxRow, at: float, error: str) -> None:
        """Back to pending, due at ``at`` (store time), with its last error."""
        await self._outcome(
            "state = 'pending', next_attempt_at = ?, last_error = ?, error_code = ?",
            (at, error, row.error_code),
            row,
        )

    async def dead(self, row: OutboxRow, error: str) -> None:
        """Keep as a dead letter with its last error."""
        await self._outcome(
            "state = 'dead', last_error = ?, error_code = ?", (error, row.error_code), row
        )

    async def release(self, rows: Sequence[OutboxRow]) -> None:
        """Back to pending at once; the interrupted attempt is not counted."""

        def update(conn: sqlite3.Connection) -> None:
            now = self.now()
            for table, prefix in (("outbox", ""), ("outbox_salvage", "s")):
                mine = [r for r in rows if r.handle.startswith("s") == bool(prefix)]
                if mine:
                    conn.executemany(
                        f"UPDATE {table} SET state = 'pending', attempts = MAX(attempts - 1, 0),"
                        " lease_until = NULL, lease_owner = NULL, next_attempt_at = ?,"
                        " updated_at = ? WHERE id = ? AND state = 'inflight' AND lease_owner = ?",
                        [(now, now, int(r.handle.removeprefix("s")), self._owner) for r in mine],
                    )

        await self._run(self._tx, update)

    # -- inspection and maintenance -----------------------------------------------------------

    async def unfinished(self) -> int:
        """Pending (including scheduled retries) plus in-flight rows, but not those set aside
        (named in ``status()``) or whose outcome waits for the disk."""
        return await self._run(self._unfinished)

    def _unfinished(self) -> int:
        assert self._worker is not None and self._worker.conn is not None
        conn = self._worker.conn
        if self._damage is None:
            query = "SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'inflight')"
            skip = [*self._aside, *self._owed]
            if skip:
                query += f" AND id NOT IN ({','.join(map(str, skip))})"
            try:
                return int(conn.execute(query).fetchone()[0])
            except sqlite3.DatabaseError as exc:
                self._note(exc)
                if self._damage is None:
                    raise
        return len(self._live(conn))

    async def status(self) -> OutboxStatus:
        """Counts by state, the age of the oldest unfinished row, and problems with the file;
        on a damaged file, counts of the rows it can read and the ids of those it cannot."""
        counts, oldest = await self._run(self._counts)
        age = None if oldest is None else max(0.0, self.now() - oldest)
        if self.is_open:
            with contextlib.suppress(OutboxError):
                self._check_file()
        problems = [*self.problems]
        summary = self._aside_summary()
        if summary is not None:
            problems.append(summary)
        if self._owed:
            problems.append(f"{len(self._owed)} outcomes wait for the disk to take writes")
        unreadable = tuple(describe_ids(self._aside))
        return OutboxStatus(counts, age, tuple(problems), unreadable=unreadable)

    def _counts(self) -> tuple[dict[str, int], float | None]:
        assert self._worker is not None and self._worker.conn is not None
        conn = self._worker.conn
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        if self._damage is None:
            try:
                query = "SELECT state, COUNT(*) FROM outbox INDEXED BY outbox_due GROUP BY state"
                counts.update(conn.execute(query).fetchall())
                query = "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'inflight')"
                return counts, conn.execute(query).fetchone()[0]
            except sqlite3.DatabaseError as exc:
                self._note(exc)
                if self._damage is None:
                    raise
                counts = dict.fromkeys(STATES, 0)
        # A damaged file: what a fresh scan by row ids reads (the rows set aside are named).
        return count_scan(self._rescan(conn), salvaged_states(conn))

    async def list_dead(self, limit: int = 100) -> builtins.list[OutboxRow]:
        """Dead letters, oldest first."""
        return await self.list("dead", limit)

    async def list(self, state: ListState = "dead", limit: int = 100) -> builtins.list[OutboxRow]:
        """Rows in ``state`` (``not_recorded``: delivered, provider recorded nothing); on a
        damaged file, the readable ones (the others are named by ``status()``)."""
        if state == "not_recorded":
            marks = ",".join("?" * len(NOT_RECORDED_OUTCOMES))
            where, params = (
                f"state = 'delivered' AND outcome IN ({marks})",
                [*NOT_RECORDED_OUTCOMES],
            )
        elif state in STATES:
            where, params = "state = ?", [state]
        else:
            await super().list(state, limit)  # raises ValueError
            return []
        return await self._run(self._list, where, params, limit, state)

    def _list(
        self, where: str, params: builtins.list[Any], limit: int, state: str
    ) -> builtins.list[OutboxRow]:
        assert self._worker is not None and self._worker.conn is not None
        conn = self._worker.conn
        if self._damage is None:
            query = f"SELECT {COLUMNS} FROM outbox WHERE {where} ORDER BY id LIMIT ?"
            try:
                return [to_row(r) for r in conn.execute(query, (*params, limit))]
            except sqlite3.DatabaseError as exc:
                self._note(exc)
                if self._damage is None:
                    raise
        # A damaged file: row by row, by id, from a fresh scan.
        found = self._rescan(conn)
        rows, failed = list_by_id(conn, sorted(found.rows), state, limit)
        for rid, why in failed.items():
            self._set_aside(rid, found.rows[rid][0], f"unreadable: {why}")
        return rows

    async def retry_dead(
        self, event_ids: Sequence[str] | None = None, *, force: bool = False
    ) -> int:
        """Dead letters back to pending with a fresh budget (``click_not_found`` needs force)."""
        update = functools.partial(
            retry_dead_rows, now=self.now(), event_ids=event_ids, force=force
        )
        return await self._run(self._tx, update)

    async def purge_delivered(self, older_than: float, *, max_batches: int | None = None) -> int:
        """Delete delivered rows older than ``older_than`` seconds, ``purge_batch`` at a time."""
        removed = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            cutoff = self.now() - older_than

            def delete(conn: sqlite3.Connection, cutoff: float = cutoff) -> int:
                return conn.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state ="
                    " 'delivered' AND updated_at <= ? LIMIT ?)",
                    (cutoff, self.purge_batch),
                ).rowcount

            count = await self._run(self._tx, delete)
            removed += count
            batches += 1
            if count < self.purge_batch:
                break
            await asyncio.sleep(0)  # let appends and claims take the lock between batches
        return removed

    async def maintain(self) -> None:
        """Remove delivered rows past ``retention`` (a few batches per call); nothing on a
        damaged file or a failing disk (deleting there could spread the damage)."""
        if self._damage is None and self._failing is None:
            await self.purge_delivered(self.retention, max_batches=10)

    async def vacuum(self) -> None:
        """``VACUUM`` the file and truncate the WAL: the file shrinks to its live rows."""
        await self._run(self._vacuum)

    def _vacuum(self) -> None:
        self._read("VACUUM", ())
        self._read("PRAGMA wal_checkpoint(TRUNCATE)", ())
