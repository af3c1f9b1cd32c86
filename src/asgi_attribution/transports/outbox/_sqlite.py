"""The embedded outbox: one SQLite file (stdlib ``sqlite3``, WAL mode, JSON rows).

Several processes on one machine may share the file: every write is a short ``BEGIN IMMEDIATE``
transaction, claims carry a lease owner and expiry, and outcomes are recorded only by the
claimant whose lease is still current. Appends arriving together share one commit. With
``synchronous="normal"`` (the default) a commit writes the WAL without fsync, which costs less
than handing it to a thread: the appends of one loop iteration are committed on the loop, on a
connection that never waits for a lock (another writer holding it sends them to the thread
instead) and never checkpoints (the store's thread does, every ``CHECKPOINT_EVERY`` commits).
Everything else runs on the store's own threads: appends that wait ``append_timeout`` at most
for another process's lock (a signup is never held longer), workers that wait ``busy_timeout``.
Appends write ``outbox_new``; the workers move its rows (:mod:`.sqlite_appended`). The store
knows its file: at open ``PRAGMA quick_check`` (damage and unreadable row ids are in
``status().problems``), and after each append commit (before it too, on the thread) and at
each claim the path's device and inode are compared with the file opened. A deleted or
replaced file stops appends (they raise, never report an event stored) and is logged at ERROR;
the rows already in the deleted file are still delivered by this process while it runs.

The SQLite outbox's threads and transactions: one connection per thread, short writes.

:class:`Worker` owns one thread and the one connection it ever touches; :meth:`Worker.tx` runs
a function inside ``BEGIN IMMEDIATE``. The multi-row writes of :mod:`.sqlite` are here too.

The SQLite outbox's append table, ``outbox_new``: its rows moved into the outbox.

Appends write ``outbox_new``, which has no index but its row id: one b-tree written per commit,
where the outbox's own table writes three (its unique event id and its due index made a lone
signup's commit cost 1.9x; bench/README.md). The store's worker moves the rows into the
outbox, where the event id dedupes as the append did before: inside each claim's transaction,
before a status or a listing, and at close, at most :data:`MOVE_BATCH` rows per transaction
(another process's appends wait for the lock meanwhile).

A move that fails is undone alone (a savepoint), the caller's transaction goes on, and the
rows stay stored where they are:

- a damaged page (``SQLITE_CORRUPT``): at the next claim (or status, listing, close) the rows
  that can be read move one by one, each in its own transaction; those that cannot (a range of
  ids when even the ids are unreadable) are set aside and named in ``problems``; they are tried
  again when the store is opened again;
- anything else (a full disk, a refusing trigger): ``problems`` names the cause, logged at
  ERROR once, until a move succeeds; the next claim tries again.

Reading and operating a SQLite outbox: counts, listing by state, dead-letter retries,
retention in small batches, VACUUM. A mixin of :class:`SQLiteOutbox`, which holds the file,
its threads and its clock; kept apart from the delivery path so each module stays small.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
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
from ._sqlite_schema import (
    COLUMNS,
    AnchoredClock,
    FileId,
    WallClock,
    check_health,
    due_ids,
    file_id,
    load_clock,
    note_time,
    prepare,
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
    "MOVE_BATCH",
    "NEW_COLUMNS",
    "WAL_RESTART_FRAMES",
    "SQLiteAdmin",
    "SQLiteOutbox",
    "SetAside",
    "Worker",
    "checkpoint",
    "commit_now",
    "counted",
    "damaged",
    "has_new",
    "insert_rows",
    "listed",
    "locked",
    "move_new",
    "note_problem",
    "retry_dead_rows",
    "salvage",
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


#: Rows moved per transaction: a claim holds the write lock briefly however long the backlog.
MOVE_BATCH = 2000

#: An appended row read as the outbox's ``COLUMNS`` (pending, never attempted).
NEW_COLUMNS = (
    "id, event_id, provider, kind, event, 'pending', 0, next_attempt_at, NULL, created_at,"
    " updated_at, NULL, NULL, NULL, NULL"
)

_WAITING = "appended rows wait in outbox_new"

_SET_ASIDE = "appended rows cannot be read"


def damaged(error: sqlite3.DatabaseError) -> bool:
    """True when ``error`` says the file is damaged (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``).

    Example:
        >>> damaged(sqlite3.DatabaseError("database disk image is malformed"))
        True
    """
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)
    return "malformed" in str(error) or "not a database" in str(error)


@dataclasses.dataclass
class SetAside:
    """What a store knows of its append table's damage: the row ids set aside, as (low, high)
    ranges, and whether a damaged page was met since the last salvage."""

    ranges: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    #: Of those, the rows copied into the outbox (their delete failed): not waiting.
    copied: list[int] = dataclasses.field(default_factory=list)
    salvage_due: bool = False

    def segments(self) -> list[tuple[int, int]]:
        """The id ranges outside those set aside, in order: each is read by a search on the
        row id, so no read reaches a page set aside (a scan with a filter would)."""
        out, low, top = [], -(2**63), 2**63 - 1
        for a, b in sorted(self.ranges):
            if a > low:
                out.append((low, a - 1))
            low = max(low, b + 1)
        return [*out, (low, top)] if low <= top else out


def has_new(conn: sqlite3.Connection, aside: SetAside) -> bool:
    """True when appended rows (other than those set aside) wait; a plain read, no lock. An
    unreadable table answers True: the move then names the cause."""
    try:
        return any(
            conn.execute(
                "SELECT 1 FROM outbox_new WHERE id BETWEEN ? AND ? LIMIT 1", seg
            ).fetchone()
            for seg in aside.segments()
        )
    except sqlite3.DatabaseError:
        return True


def counted(conn: sqlite3.Connection, aside: SetAside) -> tuple[int, float | None]:
    """How many appended rows wait (those set aside left out), and the oldest one's time."""
    total, oldest = 0, None
    for seg in aside.segments():
        query = "SELECT COUNT(*), MIN(created_at) FROM outbox_new WHERE id BETWEEN ? AND ?"
        count, first = conn.execute(query, seg).fetchone()
        total += count
        if first is not None and (oldest is None or first < oldest):
            oldest = first
    return total, oldest


def listed(conn: sqlite3.Connection, aside: SetAside, limit: int) -> list[tuple[object, ...]]:
    """Up to ``limit`` appended rows, oldest first, as the outbox's ``COLUMNS``."""
    rows: list[tuple[object, ...]] = []
    for seg in aside.segments():
        query = f"SELECT {NEW_COLUMNS} FROM outbox_new WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?"
        rows += conn.execute(query, (*seg, limit - len(rows))).fetchall()
        if len(rows) >= limit:
            break
    return rows


def move_new(conn: sqlite3.Connection, *, problems: list[str], aside: SetAside) -> int:
    """Move up to :data:`MOVE_BATCH` appended rows into the outbox, oldest first, inside the
    caller's write transaction; an event id already there keeps its row. Returns how many rows
    were taken out of outbox_new. On a damaged page nothing moves and :func:`salvage` is due
    (SQLite fails every later statement of a transaction that met one)."""
    taken = 0
    try:
        for low, high in aside.segments():
            query = "SELECT id FROM outbox_new WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?"
            ids = [r[0] for r in conn.execute(query, (low, high, MOVE_BATCH - taken))]
            if ids:
                _move(conn, f"id BETWEEN {int(ids[0])} AND {int(ids[-1])}")
                taken += len(ids)
            if taken >= MOVE_BATCH:
                break
    except sqlite3.DatabaseError as exc:
        if damaged(exc):
            aside.salvage_due = True
        note_problem(problems, _WAITING, f"{_WAITING}, not moved into the outbox: {exc}")
        return 0
    _clear(problems, _WAITING)
    return taken


def _move(conn: sqlite3.Connection, where: str, delete: bool = True) -> None:
    conn.execute("SAVEPOINT move_new")
    try:
        conn.execute(
            "INSERT INTO outbox (event_id, provider, kind, event, state, attempts,"
            " next_attempt_at, created_at, updated_at) SELECT event_id, provider, kind, event,"
            f" 'pending', 0, next_attempt_at, created_at, updated_at FROM outbox_new WHERE {where}"
            " ORDER BY id ON CONFLICT (event_id) DO NOTHING"
        )
        if delete:
            conn.execute(f"DELETE FROM outbox_new WHERE {where}")
    except BaseException:
        if conn.in_transaction:  # SQLite may have ended the whole transaction itself
            conn.execute("ROLLBACK TO move_new")
            conn.execute("RELEASE move_new")
        raise
    conn.execute("RELEASE move_new")


def salvage(
    tx: Callable[[Callable[[sqlite3.Connection], None]], None],
    conn: sqlite3.Connection,
    problems: list[str],
    aside: SetAside,
) -> None:
    """After a damaged page: every appended row that can be read moves in a transaction of its
    own (``tx``); one that cannot be deleted (its page's neighbour is the damaged one) is copied
    into the outbox and set aside (the event id dedupes a later copy); the rest is set aside
    and named in ``problems``. A no-op unless due."""
    if not aside.salvage_due:
        return
    aside.salvage_due = False
    for rid in _readable_ids(conn, aside):
        try:
            try:
                tx(functools.partial(_move, where=f"id = {int(rid)}"))
            except sqlite3.DatabaseError as exc:
                if not damaged(exc):
                    raise
                aside.ranges.append((rid, rid))
                tx(functools.partial(_move, where=f"id = {int(rid)}", delete=False))
                aside.copied.append(rid)
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                aside.salvage_due = True  # a lock, a full disk: the next claim goes on
                break
    lost = [(a, b) for a, b in aside.ranges if not (a == b and a in aside.copied)]
    if lost or aside.copied:
        shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in lost[:10])
        text = f"{_SET_ASIDE} (damaged): ids {shown or 'none'}{' ...' if len(lost) > 10 else ''}"
        text += f" kept in outbox_new; {len(aside.copied)} more copied into the outbox"
        note_problem(problems, _SET_ASIDE, text + " (their damaged neighbour page cannot be freed)")
    if not aside.salvage_due:
        _clear(problems, _WAITING)


def _readable_ids(conn: sqlite3.Connection, aside: SetAside) -> list[int]:
    """The ids that can be read, read from both ends of each segment; the range between, which
    cannot, is set aside."""
    found: list[int] = []
    for low, high in aside.segments():
        query = "SELECT id FROM outbox_new WHERE id BETWEEN ? AND ? ORDER BY id"
        head: list[int] = []
        try:
            head.extend(r[0] for r in conn.execute(query, (low, high)))
            found += head
            continue
        except sqlite3.DatabaseError:
            pass
        tail: list[int] = []
        with contextlib.suppress(sqlite3.DatabaseError):
            tail.extend(r[0] for r in conn.execute(query + " DESC", (low, high)))
        gap = (head[-1] + 1 if head else low, tail[-1] - 1 if tail else high)
        aside.ranges.append(gap)
        found += head + tail[::-1]
    return found


def note_problem(problems: list[str], kind: str, text: str) -> None:
    """Keep one line of ``kind`` (its first words) in ``problems``: a new text replaces it and
    is logged at ERROR.

    Example:
        >>> problems = []
        >>> note_problem(problems, "disk", "disk full"); note_problem(problems, "disk", "disk ok")
        >>> problems
        ['disk ok']
    """
    if text in problems:
        return
    _clear(problems, kind)
    problems.append(text)
    logger.error("%s", text)


def _clear(problems: list[str], kind: str) -> None:
    problems[:] = [p for p in problems if not p.startswith(kind)]


class SQLiteAdmin(OutboxStore):
    """Counts, lists, retries, retention and VACUUM over the file of a :class:`SQLiteOutbox`."""

    problems: builtins.list[str]
    unreadable: builtins.list[int]
    set_aside: SetAside
    _worker: Worker | None
    retention: float
    purge_batch: int

    @property
    def is_open(self) -> bool:  # provided by SQLiteOutbox
        raise NotImplementedError

    async def _run(self, fn: Callable[..., T], *args: Any, appending: bool = False) -> T:
        raise NotImplementedError

    def _tx(self, fn: Callable[[sqlite3.Connection], T], appending: bool = False) -> T:
        raise NotImplementedError

    def _read(self, query: str, params: Sequence[Any]) -> builtins.list[tuple[Any, ...]]:
        assert self._worker is not None and self._worker.conn is not None
        return self._worker.conn.execute(query, params).fetchall()

    def _check_file(self) -> None:
        raise NotImplementedError

    async def _move_appended(self, batches: int = 10) -> None:
        """Move appended rows into the outbox table (where every version of this package reads
        them), a batch per transaction, ``batches`` at most (a backlog past that is left to the
        claims: a status or a close is not held for seconds). Best effort: they are stored
        either way, and a failure is in problems."""
        move = functools.partial(move_new, problems=self.problems, aside=self.set_aside)
        with contextlib.suppress(OutboxError):
            for _ in range(batches):
                if await self._run(self._tx, move) < MOVE_BATCH:
                    break
                await asyncio.sleep(0)  # let appends and claims take the lock between batches
            await self._run(self._salvage)

    def _list_appended(self, limit: int) -> builtins.list[tuple[Any, ...]]:
        assert self._worker is not None and self._worker.conn is not None
        try:
            return listed(self._worker.conn, self.set_aside, limit)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(str(exc)) from exc

    def _salvage(self) -> None:
        """On the worker's thread: see :func:`.sqlite_appended.salvage`."""
        assert self._worker is not None and self._worker.conn is not None
        salvage(self._tx, self._worker.conn, self.problems, self.set_aside)

    def _appended(self) -> tuple[int, float | None]:
        """How many rows wait in outbox_new (those set aside left out) and the oldest one's
        time; (0, None) when the table cannot be read, which is then named in problems."""
        assert self._worker is not None and self._worker.conn is not None
        try:
            return counted(self._worker.conn, self.set_aside)
        except sqlite3.DatabaseError as exc:
            if damaged(exc):  # the readable rows moved, the damaged page set aside: again
                self.set_aside.salvage_due = True
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._salvage()
                    return counted(self._worker.conn, self.set_aside)
            note_problem(
                self.problems,
                "appended rows cannot be counted",
                f"appended rows cannot be counted (damaged): {exc}",
            )
            return 0, None

    # -- inspection and maintenance -----------------------------------------------------------

    async def unfinished(self) -> int:
        """Pending (including scheduled retries) plus in-flight rows."""
        query = "SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'inflight')"
        if self.unreadable:  # set aside: named in status().problems, never deliverable here
            query += f" AND id NOT IN ({','.join(map(str, self.unreadable))})"
        appended = (await self._run(self._appended))[0]  # first: it may move rows (salvage)
        return appended + int((await self._run(self._read, query, ()))[0][0])

    async def status(self) -> OutboxStatus:
        """Counts by state, the age of the oldest unfinished row, and problems with the file
        (appended rows are moved into the outbox table first, 20,000 at most)."""
        # Moved first, so a move that cannot be made is in the problems of any process's status.
        await self._move_appended()
        counts: dict[str, int] = dict.fromkeys(STATES, 0)
        # Counted from the index, so a damaged table page still gives counts.
        query = "SELECT state, COUNT(*) FROM outbox INDEXED BY outbox_due GROUP BY state"
        for state, n in await self._run(self._read, query, ()):
            counts[state] = n
        # Rows appended and not yet moved into the outbox are pending.
        appended, oldest = await self._run(self._appended)
        counts["pending"] += appended
        query = "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'inflight')"
        with contextlib.suppress(OutboxError):  # on a damaged page: the problems say so
            moved = (await self._run(self._read, query, ()))[0][0]
            oldest = min((t for t in (oldest, moved) if t is not None), default=None)
        age = None if oldest is None else max(0.0, self.now() - oldest)
        if self.is_open:
            with contextlib.suppress(OutboxError):
                self._check_file()
        return OutboxStatus(counts, age, tuple(self.problems))

    async def list_dead(self, limit: int = 100) -> builtins.list[OutboxRow]:
        """Dead letters, oldest first."""
        return await self.list("dead", limit)

    async def list(self, state: ListState = "dead", limit: int = 100) -> builtins.list[OutboxRow]:
        """Rows in ``state`` (``not_recorded``: delivered, provider recorded nothing)."""
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
        if state == "pending":
            await self._move_appended()
        query = f"SELECT {COLUMNS} FROM outbox WHERE {where} ORDER BY id LIMIT ?"
        rows = [to_row(r) for r in await self._run(self._read, query, (*params, limit))]
        if state == "pending" and len(rows) < limit:  # and those that could not be moved
            with contextlib.suppress(OutboxError):
                found = await self._run(self._list_appended, limit - len(rows))
                rows += [to_row(r) for r in found]
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
        """Remove delivered rows past ``retention`` (a few batches per call)."""
        await self.purge_delivered(self.retention, max_batches=10)

    async def vacuum(self) -> None:
        """``VACUUM`` the file and truncate the WAL: the file shrinks to its live rows."""
        await self._run(self._vacuum)

    def _vacuum(self) -> None:
        self._read("VACUUM", ())
        self._read("PRAGMA wal_checkpoint(TRUNCATE)", ())


DAY = 86_400.0

#: Commits made on the loop between two checkpoints of the WAL on the store's thread.
CHECKPOINT_EVERY = 200


class SQLiteOutbox(SQLiteAdmin):
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
        #: Outbox row ids that could not be read (at open, or by a claim); claims skip them.
        self.unreadable: builtins.list[int] = []
        self.set_aside = SetAside()
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
            raise OutboxError(f"{self.description}: {exc}") from exc

    def _tx(self, fn: Callable[[sqlite3.Connection], T], appending: bool = False) -> T:
        worker = self._appender if appending else self._worker
        assert worker is not None
        return worker.tx(fn)

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
            (self.problems, self.unreadable), self.set_aside = check_health(conn), SetAside()
            prepare(conn, path, self.create)
            self._clock = load_clock(conn, self.wall)
            self._identity = file_id(path)
        except sqlite3.DatabaseError as exc:
            worker.disconnect()
            raise OutboxError(f"{path} is not a usable SQLite outbox: {exc}") from None
        except BaseException:
            worker.disconnect()
            raise
        if self.problems:
            logger.error("outbox %s is damaged: %s", path, "; ".join(self.problems))
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
        """Finish pending appends, move appended rows into the outbox table (20,000 at most:
        where any version reads them), close the connections and stop the threads."""
        await self._batcher.wait()
        await self._move_appended()
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

    # -- appends, grouped into shared commits -----------------------------------------------

    async def append(self, row: OutboxRow) -> None:
        """Insert a pending row; returns once its transaction is committed in the file at the
        path (raises :class:`OutboxError` otherwise, also when the lock wait passes
        ``append_timeout``)."""
        await self._batcher.add(row)

    async def _append_many(self, rows: builtins.list[OutboxRow]) -> None:
        await self._run(self._write_rows, rows, appending=True)

    def _write_rows(self, rows: builtins.list[OutboxRow]) -> None:
        self._check_file()
        self._tx(functools.partial(insert_rows, rows=rows), appending=True)
        self._check_file()  # replaced during the commit: the rows went to the old file

    def _write_now(self, rows: builtins.list[OutboxRow]) -> bool:
        """Commit ``rows`` on the calling (loop) thread, or False: take the appender's thread."""
        if not self._now_lock.acquire(blocking=False):
            return False  # another loop is committing on it
        try:
            conn = self._now
            if conn is None:
                return False
            if self._lost is not None:
                self._check_file()  # raises
            # The file is checked after the commit only: rows committed to a file deleted
            # before are reported not stored all the same.
            try:
                if not commit_now(conn, rows):
                    return False  # another writer: the thread waits for it, the loop does not
            except sqlite3.DatabaseError as exc:
                raise OutboxError(f"{self.description}: {exc}") from exc
            self._check_file()
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
        self._salvage()  # after a damaged page of appended rows: their readable rows, first
        # A plain read first: idle workers then never take the write lock.
        if not has_new(conn, self.set_aside) and not due_ids(conn, self.now(), 1, self.unreadable):
            return []

        def claim(conn: sqlite3.Connection, only: int | None = None) -> builtins.list[OutboxRow]:
            if only is None:
                move_new(conn, problems=self.problems, aside=self.set_aside)  # appended first
            now = self.now()
            ids = [only] if only is not None else due_ids(conn, now, limit, self.unreadable)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            conn.execute(
                "UPDATE outbox SET state = 'inflight', lease_until = ?, lease_owner = ?,"
                " attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, ?),"
                f" updated_at = ? WHERE id IN ({marks})",
                (now + lease, self._owner, now, now, *ids),
            )
            note_time(conn, now)
            query = f"SELECT {COLUMNS} FROM outbox WHERE id IN ({marks}) ORDER BY next_attempt_at"
            return [to_row(r) for r in conn.execute(query, ids)]

        try:
            return self._tx(claim)
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):  # a lock held too long, a full disk: not a damaged row
                raise
        # A damaged file: claim row by row, and set aside (by id) the rows that fail.
        rows: builtins.list[OutboxRow] = []
        for rid in due_ids(conn, self.now(), limit, self.unreadable):
            try:
                rows.extend(self._tx(functools.partial(claim, only=rid)))
            except sqlite3.DatabaseError as exc:
                if not damaged(exc):
                    raise
                self.unreadable.append(rid)
                self.problems.append(f"row {rid} cannot be read or written: {exc}")
                logger.error("outbox %s: row %d set aside: %s", self.description, rid, exc)
        return rows

    async def _outcome(self, sql: str, params: tuple[Any, ...], row: OutboxRow) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"UPDATE outbox SET {sql}, lease_until = NULL, lease_owner = NULL, updated_at = ?"
                " WHERE id = ? AND state = 'inflight' AND lease_owner = ?",
                (*params, self.now(), int(row.handle), self._owner),
            )

        await self._run(self._tx, update)

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
            conn.executemany(
                "UPDATE outbox SET state = 'pending', attempts = MAX(attempts - 1, 0),"
                " lease_until = NULL, lease_owner = NULL, next_attempt_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'inflight' AND lease_owner = ?",
                [(now, now, int(r.handle), self._owner) for r in rows],
            )

        await self._run(self._tx, update)
