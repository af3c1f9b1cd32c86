"""The SQLite outbox's file: its schema, its clock, its identity and its health.

Plain functions on a ``sqlite3.Connection``, run on the store's own threads (see :mod:`._sqlite`).
A file holds one table of rows (``outbox``), with a unique event id and an index of due rows,
and a table of the store's own values (``outbox_meta``); ``PRAGMA user_version`` is the schema
version, and a file of another version is refused at open with an error naming it.

Due times, leases and retry budgets never read the wall clock directly. A wall clock can be
stepped (NTP, a VM resumed, an operator) or run ahead on one machine. An outbox that scheduled
by it would dead-letter every retrying event after a +1 h step, stall retries for an hour after
a -1 h step, and let a worker whose clock runs ahead take over live leases. So the store keeps
its own clock, :class:`AnchoredClock`: the wall time read once, then advanced by
``time.monotonic()`` (which steps never touch). Steps of the wall clock are detected and
logged, not followed. The anchor is kept in the file, so every process on the machine (one
monotonic clock) reads the same store time, whatever its own wall clock says.

Health: ``PRAGMA quick_check``, and what a damaged file still gives. A damaged page fails (or
cuts short) every read that goes through it, so a damaged file is read by row id (:func:`scan`):
the ids from an index read whole, the rows one chunk at a time, each failing chunk row by row.
Rows that read but cannot be written in place are claimed in ``outbox_salvage``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..._events import ORDER_HOLDS, ORDER_WAITS
from ..._exceptions import OutboxError
from ._store import NOT_RECORDED_OUTCOMES, OutboxRow

__all__ = [
    "COLUMNS",
    "DUE",
    "SALVAGE",
    "SCHEMA_VERSION",
    "AnchoredClock",
    "FileId",
    "Scan",
    "WallClock",
    "boot_id",
    "check_health",
    "claim_salvaged",
    "count_scan",
    "damaged",
    "describe_ids",
    "due_ids",
    "failing",
    "file_id",
    "list_by_id",
    "load_clock",
    "move_claim",
    "note_time",
    "prepare",
    "read_live",
    "salvaged_states",
    "scan",
    "summarize",
    "to_row",
]


logger = logging.getLogger("asgi_attribution")

#: A wall clock: seconds since the epoch (``time.time`` unless a test injects another).
WallClock = Callable[[], float]

#: A difference between the wall clock and the store's clock larger than this is a step.
STEP_TOLERANCE = 2.0


def boot_id() -> str:
    """An id of this boot of the machine (Linux), or ``""`` where there is none.

    ``time.monotonic()`` restarts at each boot, so an anchor is only valid for the boot that
    wrote it.

    Example:
        >>> isinstance(boot_id(), str)
        True
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""


class AnchoredClock:
    """Store time: ``anchor + time.monotonic()``, never stepped by the wall clock.

    ``anchor`` is wall time minus monotonic time at the moment the clock was anchored (by this
    process or, for a shared file, by the first process of this boot). ``wall`` is only read to
    notice a step (logged once per step, at WARNING) and to anchor a new clock.

    Example:
        >>> wall = [1_800_000_000.0]
        >>> clock = AnchoredClock(wall=lambda: wall[0])
        >>> before = clock.now()
        >>> wall[0] += 3600  # the wall clock jumps an hour ahead
        >>> clock.now() - before < 1  # the store's clock does not
        True
        >>> round(clock.skew())  # noticed, not followed
        3600
    """

    def __init__(self, anchor: float | None = None, *, wall: WallClock = time.time) -> None:
        self.wall = wall
        self.anchor = wall() - time.monotonic() if anchor is None else anchor
        self._reported_skew = 0.0

    @classmethod
    def resume(
        cls, anchor: float, high_water: float, *, wall: WallClock = time.time
    ) -> AnchoredClock:
        """A clock that continues a stored one and never reads earlier than ``high_water``.

        Used when the stored anchor belongs to another boot (the monotonic clock restarted):
        the new anchor is the wall time, or the last store time seen if the wall clock is
        behind it, so store time never runs backwards.

        Example:
            >>> clock = AnchoredClock.resume(0.0, high_water=2e9, wall=lambda: 1e9)
            >>> clock.now() >= 2e9
            True
        """
        del anchor  # another boot's anchor means nothing on this one
        start = max(wall(), high_water)
        return cls(start - time.monotonic(), wall=wall)

    def now(self) -> float:
        """The store's time in seconds (comparable to Unix time, immune to wall-clock steps)."""
        return self.anchor + time.monotonic()

    def skew(self) -> float:
        """Wall clock minus store time, in seconds (0 when nothing stepped)."""
        return self.wall() - self.now()

    def check(self, description: str) -> float:
        """Log (once per step) a wall clock that left the store's clock; return the skew."""
        skew = self.skew()
        if abs(skew - self._reported_skew) > STEP_TOLERANCE:
            self._reported_skew = skew
            logger.warning(
                "outbox %s: the wall clock is %+.0fs from the outbox's clock (stepped, or "
                "another clock anchored it); due times and leases keep the outbox's clock",
                description,
                skew,
            )
        return skew


SCHEMA_VERSION = 4

# The CHECK is spelled with ORs: SQLite runs an IN list in a CHECK through a temporary table
# built for every row written (32,000 of an insert's 84,000 instructions).
SCHEMA = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state = 'pending' OR state = 'inflight' OR state = 'delivered' OR state = 'dead'),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until REAL,
    lease_owner TEXT,
    last_error TEXT,
    first_attempt_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    error_code TEXT,
    outcome TEXT,
    outcome_reason TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_open_leads ON outbox
    (provider, json_extract(event, '$.customer_external_id'), id)
    WHERE kind = 'lead' AND (state = 'pending' OR state = 'inflight');
CREATE INDEX IF NOT EXISTS outbox_open_sales ON outbox
    (provider, json_extract(event, '$.invoice_id'), id)
    WHERE kind = 'sale' AND (state = 'pending' OR state = 'inflight');
CREATE TABLE outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

COLUMNS = (
    "id, event_id, provider, kind, event, state, attempts, next_attempt_at, last_error, "
    "created_at, updated_at, first_attempt_at, error_code, outcome, outcome_reason"
)

#: The unfinished holders of each order key, for the claim's order: leads per customer, sales
#: per invoice (added to version 4 files at open: older versions of the package ignore them).
OPEN_HOLDERS = {"lead": SCHEMA.split(";")[2], "sale": SCHEMA.split(";")[3]}


def _held() -> str:
    """A row the claim passes over: one whose wait key (``ORDER_WAITS``) a row of the same
    provider stored before it (a lower id) holds (``ORDER_HOLDS``) while pending or in flight
    (leased by any worker): a customer's sale or update behind its lead, a refund behind the
    sale with its invoice id."""
    waits = []
    for kind, (space, wait_field) in ORDER_WAITS.items():
        for holder, (held_space, held_field) in ORDER_HOLDS.items():
            if held_space != space:
                continue
            waits.append(
                f"(outbox.kind = '{kind}' AND EXISTS (SELECT 1 FROM outbox AS h"
                f" INDEXED BY outbox_open_{holder}s WHERE h.kind = '{holder}'"
                " AND (h.state = 'pending' OR h.state = 'inflight')"
                f" AND h.provider = outbox.provider AND json_extract(h.event, '$.{held_field}')"
                f" = json_extract(outbox.event, '$.{wait_field}') AND h.id < outbox.id))"
            )
    return f"({' OR '.join(waits)})"


HELD = _held()

DUE = (
    "((state = 'pending' AND next_attempt_at <= :now)"
    " OR (state = 'inflight' AND lease_until <= :now))"
)

#: The identity of a file: (device, inode). Another file at the path has another identity.
FileId = tuple[int, int]


def file_id(path: str | Path) -> FileId | None:
    """The (device, inode) of ``path``, or None if nothing is there (a ``str`` spares the
    ``Path`` conversion: a quarter of the cost of this check, made after every append commit).

    Example:
        >>> file_id(Path("/nonexistent/events.db")) is None
        True
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


def prepare(conn: sqlite3.Connection, path: Path, create: bool) -> None:
    """Create the schema in a new file (if ``create``), or check that the file holds an outbox
    of :data:`SCHEMA_VERSION`; any other version raises :class:`OutboxError` naming it.

    Example:
        >>> conn = sqlite3.connect(":memory:", isolation_level=None)
        >>> prepare(conn, Path("events.db"), create=True)
        >>> conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        True
        >>> _ = conn.execute("PRAGMA user_version = 3")
        >>> prepare(conn, Path("events.db"), create=True)
        Traceback (most recent call last):
        ...
        asgi_attribution._exceptions.OutboxError: events.db holds an outbox of schema version 3, ...
    """
    # One transaction: two processes opening a new file at once create the schema once.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        has_outbox = _has_table(conn, "outbox")
        if not has_outbox and version == 0:
            if not create:
                raise OutboxError(f"{path} is not an asgi-attribution outbox (no outbox table)")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version == SCHEMA_VERSION:
            for index in OPEN_HOLDERS.values():  # a file made before an index: added once
                conn.execute(index)
        elif not has_outbox:
            raise OutboxError(
                f"{path} is not an asgi-attribution outbox (no outbox table; its"
                f" user_version is {version})"
            )
        elif version != SCHEMA_VERSION:
            which = "a newer" if version > SCHEMA_VERSION else "an older"
            raise OutboxError(
                f"{path} holds an outbox of schema version {version}, made by {which} version"
                f" of asgi-attribution; this one reads version {SCHEMA_VERSION} only: open it"
                " with the version that made it (to deliver its rows), or use a new file"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(query, (name,)).fetchone() is not None


def load_clock(conn: sqlite3.Connection, wall: WallClock) -> AnchoredClock:
    """The file's clock: the anchor of this boot stored in the file, or a new one.

    Every process on the machine shares ``time.monotonic()``, so the stored anchor gives them
    one store time, whatever each one's wall clock says. After a reboot (another boot id, or a
    monotonic clock behind the last store time seen) the clock is anchored again, never
    earlier than the last store time seen.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = dict(conn.execute("SELECT key, value FROM outbox_meta").fetchall())
        boot = boot_id()
        anchor = meta.get("clock_anchor")
        high = float(meta.get("clock_high", 0.0))
        if anchor is not None and meta.get("clock_boot") == boot:
            clock = AnchoredClock(float(anchor), wall=wall)
            if clock.now() >= high - STEP_TOLERANCE:
                conn.execute("COMMIT")
                return clock
        clock = AnchoredClock.resume(float(anchor or 0.0), high, wall=wall)
        conn.executemany(
            "INSERT INTO outbox_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [("clock_anchor", repr(clock.anchor)), ("clock_boot", boot)],
        )
        conn.execute("COMMIT")
        return clock
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def due_ids(conn: sqlite3.Connection, now: float, limit: int, skip: list[int]) -> list[int]:
    """Ids of up to ``limit`` due rows: pending and due, or in flight with an expired lease.

    Due rows are found in the index (state, due time, id); a row behind an unfinished holder
    of its order key (:data:`HELD`: a sale behind its lead, a refund behind its sale) is
    passed over. ``skip`` lists unreadable
    ids. Called inside the claim's write transaction, so two workers never see a sale as free
    while the other holds its lead.
    """
    without = f" AND id NOT IN ({','.join(map(str, skip))})" if skip else ""
    expired = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM outbox WHERE state = 'inflight' AND lease_until <= ?"
            f"{without} AND NOT {HELD} ORDER BY lease_until LIMIT ?",
            (now, limit),
        )
    ]
    due = conn.execute(
        "SELECT id FROM outbox INDEXED BY outbox_due WHERE state = 'pending'"
        f" AND next_attempt_at <= ?{without} AND NOT {HELD} ORDER BY next_attempt_at LIMIT ?",
        (now, limit - len(expired)),
    )
    return expired + [r[0] for r in due]


def note_time(conn: sqlite3.Connection, now: float) -> None:
    """Record ``now`` as the latest store time seen (inside a write transaction)."""
    conn.execute(
        "INSERT INTO outbox_meta (key, value) VALUES ('clock_high', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS REAL), excluded.value)",
        (now,),
    )


def check_health(conn: sqlite3.Connection, limit: int = 100) -> list[str]:
    """``PRAGMA quick_check``: the damage it finds, one problem line (empty when healthy).

    Example:
        >>> check_health(sqlite3.connect(":memory:"))
        []
    """
    try:
        found = [str(r[0]) for r in conn.execute(f"PRAGMA quick_check({limit})")]
    except sqlite3.DatabaseError as exc:
        found = [f"failed: {exc}"]
    if found == ["ok"]:
        return []
    text = "; ".join(line.replace("\n", "; ") for line in found)
    return [f"quick_check: {text[:500]}{' ...' if len(text) > 500 else ''}"]


@dataclass
class Scan:
    """What a damaged file still gives: its readable rows, and the ids of those it does not.

    ``rows`` maps a readable row id to (event id, state, created_at); ``unreadable`` maps the id
    of a row that cannot be read to its event id, when an index of the table still names it.
    """

    rows: dict[int, tuple[str, str, float]] = field(default_factory=dict)
    unreadable: dict[int, str | None] = field(default_factory=dict)
    #: The highest row id the scan looked at: rows after it were appended since.
    top: int = 0
    #: True when no index could be read whole: some unreadable ids may name no row.
    guessed: bool = False


_READ = "SELECT id, event_id, state, created_at FROM outbox NOT INDEXED WHERE "


def scan(conn: sqlite3.Connection) -> Scan:
    """Read every row that can be read, by row id, skipping damaged pages.

    The row ids come from an index of the table read whole (which also names each row's event
    id), and the rows are read by id: a damaged page fails (or misses) the reads of its own rows
    only. With no index readable, the table is read by ranges of ids, a failed range halved
    until each failing range is one id.

    Example:
        >>> conn = sqlite3.connect(":memory:", isolation_level=None)
        >>> prepare(conn, Path("events.db"), create=True)
        >>> _ = conn.execute("INSERT INTO outbox (event_id, provider, kind, event,"
        ...     " next_attempt_at, created_at, updated_at) VALUES ('evt_1', 'dub', 'lead',"
        ...     " '{}', 0, 0, 0)")
        >>> found = scan(conn)
        >>> found.rows, found.unreadable
        ({1: ('evt_1', 'pending', 0.0)}, {})
    """
    named = _named_ids(conn)
    if named is None:
        return _scan_ranges(conn)
    found = Scan(top=max(named, default=0))
    ids = sorted(named)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        try:
            rows = conn.execute(_READ + f"id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        except sqlite3.DatabaseError:
            rows = []
            for rid in chunk:
                with contextlib.suppress(sqlite3.DatabaseError):
                    rows += conn.execute(_READ + "id = ?", (rid,)).fetchall()
        for rid, event_id, state, created in rows:
            found.rows[rid] = (event_id, state, created)
    found.unreadable = {i: named[i] for i in ids if i not in found.rows}
    with contextlib.suppress(sqlite3.DatabaseError):  # rows the index does not know
        for rid, event_id, state, created in conn.execute(_READ + "id > ?", (found.top,)):
            found.rows[rid] = (event_id, state, created)
            found.top = max(found.top, rid)
    return found


def _scan_ranges(conn: sqlite3.Connection) -> Scan:
    """The table read by ranges of row ids (no index to list them): some ids named unreadable
    may name no row."""
    try:
        top = conn.execute("SELECT max(id) FROM outbox").fetchone()[0] or 0
    except sqlite3.DatabaseError:  # nothing says how far the ids go: as many as pages hold
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        top = pages * conn.execute("PRAGMA page_size").fetchone()[0] // 128
    found = Scan(top=top, guessed=True)
    failed: list[int] = []
    todo = [(1, top)] if top else []
    while todo:
        low, high = todo.pop()
        try:
            # One id by equality: a range stops one row past its end, maybe on a damaged page.
            by = ("id = ?", (low,)) if low == high else ("id BETWEEN ? AND ?", (low, high))
            rows = conn.execute(_READ + by[0], by[1]).fetchall()
        except sqlite3.DatabaseError:
            if low == high:
                failed.append(low)
            else:
                middle = (low + high) // 2
                todo += [(middle + 1, high), (low, middle)]
            continue
        for rid, event_id, state, created in rows:
            found.rows[rid] = (event_id, state, created)
        if rows and rows[-1][0] < high:  # a damaged page can end a read early, silently
            todo.append((rows[-1][0] + 1, high))
    found.unreadable = dict.fromkeys(sorted(failed))
    return found


def _named_ids(conn: sqlite3.Connection) -> dict[int, str | None] | None:
    """Every row id (with its event id, if it can) from an index of the table read whole."""
    for query in (
        "SELECT id, event_id FROM outbox INDEXED BY sqlite_autoindex_outbox_1",
        "SELECT id, NULL FROM outbox INDEXED BY outbox_due",
    ):
        with contextlib.suppress(sqlite3.DatabaseError):
            return {int(r[0]): r[1] for r in conn.execute(query)}
    return None


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


def failing(error: sqlite3.DatabaseError) -> bool:
    """True when ``error`` says the disk failed (``SQLITE_IOERR``, ``SQLITE_READONLY``): what
    was committed may not be on it.

    Example:
        >>> failing(sqlite3.OperationalError("disk I/O error"))
        True
    """
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (10, 8)
    return "disk I/O error" in str(error) or "readonly" in str(error)


def summarize(aside: dict[int, str | None], guessed: bool) -> str | None:
    """One problem line for the rows set aside (row ids; the first 20), or None.

    Example:
        >>> summarize({3: "evt_1", 4: None}, guessed=False)
        '2 rows unreadable (ids 3, 4)'
    """
    if not aside:
        return None
    shown = ", ".join(map(str, list(aside)[:20])) + (" ..." if len(aside) > 20 else "")
    maybe = "; no index could be read whole: some of these ids may name no row" * guessed
    return f"{len(aside)} rows unreadable (ids {shown}){maybe}"


def count_scan(found: Scan, salvaged: list[tuple[Any, ...]]) -> tuple[dict[str, int], float | None]:
    """Counts by state of the rows a scan read (``outbox_salvage`` overriding), and the
    ``created_at`` of the oldest unfinished one."""
    states = {r[0]: r[1] for r in salvaged}
    counts = {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0}
    ages = []
    for rid, (_, state, created) in found.rows.items():
        state = states.get(rid, state)
        counts[state] = counts.get(state, 0) + 1
        if state in ("pending", "inflight"):
            ages.append(created)
    return counts, min(ages, default=None)


def describe_ids(ids: dict[int, str | None]) -> list[str]:
    """How ``outbox status`` names rows: the event id, or ``row N`` when no index names it.

    Example:
        >>> describe_ids({3: "evt_1", 4: None})
        ['evt_1', 'row 4']
    """
    return [event_id or f"row {rid}" for rid, event_id in ids.items()]


# -- a damaged file: rows read and claimed by id ------------------------------------------------

_LIVE = "SELECT id, state, next_attempt_at, lease_until FROM outbox NOT INDEXED WHERE id IN "

#: On a damaged file, the state of rows that cannot be written in place (their index entry is on
#: a damaged page): a row here overrides the state of the row of the same id in ``outbox``.
SALVAGE = """CREATE TABLE IF NOT EXISTS outbox_salvage (
    id INTEGER PRIMARY KEY, state TEXT NOT NULL, next_attempt_at REAL NOT NULL,
    lease_until REAL, lease_owner TEXT, attempts INTEGER NOT NULL, first_attempt_at REAL,
    updated_at REAL NOT NULL, last_error TEXT, error_code TEXT, outcome TEXT,
    outcome_reason TEXT)"""

_SALVAGE_FIELDS = (
    "state", "next_attempt_at", "attempts", "first_attempt_at", "updated_at", "last_error",
    "error_code", "outcome", "outcome_reason",
)  # fmt: skip

_UNFINISHED = ("pending", "inflight")


def salvaged_states(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """(id, state, next_attempt_at, lease_until) of the rows kept in ``outbox_salvage``.

    Example:
        >>> salvaged_states(sqlite3.connect(":memory:"))  # no such table: none
        []
    """
    try:
        return conn.execute(
            "SELECT id, state, next_attempt_at, lease_until FROM outbox_salvage"
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def read_live(
    conn: sqlite3.Connection, ids: list[int]
) -> tuple[list[tuple[Any, ...]], dict[int, str]]:
    """(id, state, next_attempt_at, lease_until) of rows ``ids``, read by id (never through an
    index), ``outbox_salvage`` overriding; and the ids that could not be read, with why."""
    live: list[tuple[Any, ...]] = []
    failed: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        try:
            live += conn.execute(_LIVE + f"({','.join('?' * len(chunk))})", chunk).fetchall()
        except sqlite3.DatabaseError:
            for rid in chunk:
                try:
                    live += conn.execute(_LIVE + "(?)", (rid,)).fetchall()
                except sqlite3.DatabaseError as exc:
                    failed[rid] = str(exc)
    salvaged = {r[0]: r for r in salvaged_states(conn)}
    return [salvaged.get(r[0], r) for r in live], failed


def claim_salvaged(
    conn: sqlite3.Connection, *, rid: int, now: float, lease: float, owner: str
) -> list[OutboxRow]:
    """Claim row ``rid`` of a damaged file in ``outbox_salvage`` (inside a write transaction):
    for a row that reads but cannot be written in place. Raises if it cannot be read."""
    found = conn.execute(f"SELECT {COLUMNS} FROM outbox NOT INDEXED WHERE id = ?", (rid,))
    first_row = found.fetchone()
    if first_row is None:
        raise sqlite3.DatabaseError("row missing from the table")
    row = to_row(first_row)  # raises on a row that no longer reads as one
    conn.execute(SALVAGE)
    if conn.execute("SELECT 1 FROM outbox_salvage WHERE id = ?", (rid,)).fetchone() is None:
        if row.state not in _UNFINISHED:
            return []
        conn.execute(
            "INSERT INTO outbox_salvage (id, state, next_attempt_at, lease_until, attempts,"
            " first_attempt_at, updated_at) VALUES (?, 'pending', ?, NULL, ?, ?, ?)",
            (rid, row.next_attempt_at, row.attempts, row.first_attempt_at, now),
        )
    claimed = conn.execute(
        "UPDATE outbox_salvage SET state = 'inflight', lease_until = ?, lease_owner = ?,"
        " attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, ?),"
        " updated_at = ? WHERE id = ? AND ((state = 'pending' AND next_attempt_at <= ?)"
        " OR (state = 'inflight' AND (lease_until IS NULL OR lease_until <= ?)))",
        (now + lease, owner, now, now, rid, now, now),
    ).rowcount
    if not claimed:
        return []
    attempts, first = conn.execute(
        "SELECT attempts, first_attempt_at FROM outbox_salvage WHERE id = ?", (rid,)
    ).fetchone()
    return [
        replace(row, state="inflight", attempts=attempts, first_attempt_at=first, handle=f"s{rid}")
    ]


def move_claim(conn: sqlite3.Connection, row: OutboxRow, rid: int, now: float, owner: str) -> None:
    """Our claim of row ``rid``, whose outcome cannot be written in place, to ``outbox_salvage``
    (inside a write transaction): its outcome is then written there."""
    conn.execute(SALVAGE)
    conn.execute(
        "INSERT INTO outbox_salvage (id, state, next_attempt_at, lease_until, lease_owner,"
        " attempts, first_attempt_at, updated_at) VALUES (?, 'inflight', ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        (rid, row.next_attempt_at, now, owner, row.attempts, row.first_attempt_at, now),
    )


def list_by_id(
    conn: sqlite3.Connection, ids: list[int], state: str, limit: int
) -> tuple[list[OutboxRow], dict[int, str]]:
    """Up to ``limit`` rows of ``ids`` in ``state`` (or ``not_recorded``), read one by one,
    ``outbox_salvage`` overriding; and the ids that could not be read, with why."""
    salvaged: dict[int, tuple[Any, ...]] = {}
    with contextlib.suppress(sqlite3.OperationalError):  # no such table: nothing salvaged
        query = f"SELECT id, {', '.join(_SALVAGE_FIELDS)} FROM outbox_salvage"
        salvaged = {r[0]: r[1:] for r in conn.execute(query)}
    rows: list[OutboxRow] = []
    failed: dict[int, str] = {}
    query = f"SELECT {COLUMNS} FROM outbox NOT INDEXED WHERE id = ?"
    for rid in ids:
        if len(rows) >= limit:
            break
        try:
            row = to_row(conn.execute(query, (rid,)).fetchone())
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            failed[rid] = str(exc)
            continue
        if rid in salvaged:
            row = replace(row, **dict(zip(_SALVAGE_FIELDS, salvaged[rid], strict=True)))
        if state == "not_recorded":
            if row.state == "delivered" and row.outcome in NOT_RECORDED_OUTCOMES:
                rows.append(row)
        elif row.state == state:
            rows.append(row)
    return rows, failed


def to_row(r: tuple[Any, ...]) -> OutboxRow:
    """An :class:`OutboxRow` from the columns :data:`COLUMNS` names."""
    (rid, event_id, provider, kind, event, state, attempts, next_at, error, created, updated,
     first, code, outcome, reason) = r  # fmt: skip
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
        error_code=code,
        outcome=outcome,
        outcome_reason=reason,
    )
