"""The SQLite outbox's append table, ``outbox_new``: its rows moved into the outbox.

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sqlite3
from collections.abc import Callable

__all__ = [
    "MOVE_BATCH",
    "NEW_COLUMNS",
    "SetAside",
    "counted",
    "damaged",
    "has_new",
    "listed",
    "move_new",
    "note_problem",
    "salvage",
]

logger = logging.getLogger("asgi_attribution")
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
