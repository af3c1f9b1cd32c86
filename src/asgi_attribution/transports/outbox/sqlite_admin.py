"""Reading and operating a SQLite outbox: counts, listing by state, dead-letter retries,
retention in small batches, VACUUM. A mixin of :class:`SQLiteOutbox`, which holds the file,
its threads and its clock; kept apart from the delivery path so each module stays small.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..._exceptions import OutboxError
from .rows import NOT_RECORDED_OUTCOMES, STATES, ListState, OutboxRow, OutboxStatus
from .sqlite_appended import (
    MOVE_BATCH,
    SetAside,
    counted,
    damaged,
    listed,
    move_new,
    note_problem,
    salvage,
)
from .sqlite_schema import COLUMNS, to_row
from .sqlite_tx import Worker, retry_dead_rows
from .store import OutboxStore

__all__ = ["SQLiteAdmin"]

T = TypeVar("T")


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
