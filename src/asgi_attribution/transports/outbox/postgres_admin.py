"""Inspection and maintenance of a PostgreSQL outbox table: counts, listings, retries, purges.

:class:`PostgresMaintenance` is the part of :class:`PostgresOutbox` that the CLI's ``status``,
``list``, ``retry`` and ``purge`` use; it runs single autocommit statements, each short.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from .postgres_schema import COLUMNS, SECONDS, OutboxTables, row_from_db
from .rows import (
    LIST_STATES,
    NOT_RECORDED_OUTCOMES,
    RETRY_REFUSED,
    STATES,
    ListState,
    OutboxRow,
    OutboxStatus,
)

__all__ = ["PostgresMaintenance"]

logger = logging.getLogger("asgi_attribution")


class PostgresMaintenance:
    """Counts, listings, dead-letter retries and purges over :meth:`execute` (a mixin).

    Example:
        >>> from asgi_attribution.transports.outbox.postgres import PostgresOutbox
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
