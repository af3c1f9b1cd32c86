"""Reading and operating a Redis outbox: counts, listing rows by state, retrying dead letters.

A mixin of :class:`RedisOutbox` (which holds the connection and the keys); kept apart from the
delivery path so each module stays small.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Sequence
from typing import Any

from .redis_rows import dump_row, entry_time, load_row
from .rows import (
    LIST_STATES,
    NOT_RECORDED_OUTCOMES,
    ListState,
    OutboxRow,
    OutboxStatus,
    refused_retry,
    restart_budget,
)

__all__ = ["RedisInspection"]

logger = logging.getLogger("asgi_attribution")


class RedisInspection:
    """Counts, lists and dead-letter retries over the keys of a :class:`RedisOutbox`."""

    group: str
    stream: str
    retry_key: str
    dead_key: str
    delivered_key: str
    done_key: str
    description: str
    problems: builtins.list[str]
    _backlog: int

    @property
    def client(self) -> Any:  # provided by RedisOutbox
        raise NotImplementedError

    def now(self) -> float:  # provided by RedisOutbox
        raise NotImplementedError

    async def _counts(self) -> tuple[int, int, int, int, int]:
        # No MULTI: at maxmemory Redis refuses every command queued in one, even reads.
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.stream)
            pipe.xpending(self.stream, self.group)
            pipe.zcard(self.retry_key)
            pipe.xlen(self.dead_key)
            pipe.get(self.delivered_key)
            try:
                length, pending_info, retries, dead, delivered = await pipe.execute()
            except Exception as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return 0, 0, 0, 0, 0  # the stream is gone: the next claim says so
        inflight = int(pending_info["pending"]) if pending_info else 0
        self._backlog = int(length) + int(retries)
        return int(length), inflight, int(retries), int(dead), int(delivered or 0)

    async def unfinished(self) -> int:
        """Entries on the stream (new or in flight) plus scheduled retries."""
        length, _, retries, _, _ = await self._counts()
        return length + retries

    async def status(self) -> OutboxStatus:
        """Counts from ``XLEN``, ``XPENDING`` and ``ZCARD``; age from the oldest entry."""
        length, inflight, retries, dead, delivered = await self._counts()
        counts = {
            "pending": length - inflight + retries,
            "inflight": inflight,
            "delivered": delivered,
            "dead": dead,
        }
        oldest: float | None = None
        first = await self.client.xrange(self.stream, count=1)
        if first:
            oldest = entry_time(first[0][0])
        earliest_retry = await self.client.zrange(self.retry_key, 0, 0)
        if earliest_retry:
            created = float(json.loads(earliest_retry[0]).get("created_at", 0.0))
            oldest = created if oldest is None else min(oldest, created)
        age = None if oldest is None else max(0.0, self.now() - oldest)
        return OutboxStatus(counts, age, tuple(self.problems))

    async def list_dead(self, limit: int = 100) -> builtins.list[OutboxRow]:
        """Dead letters, oldest first."""
        entries = await self.client.xrange(self.dead_key, count=limit)
        return [load_row(entry_id, fields, "dead") for entry_id, fields in entries]

    async def list(self, state: ListState = "dead", limit: int = 100) -> builtins.list[OutboxRow]:
        """Rows in ``state``; delivered ones from the capped ``done`` stream, newest kept."""
        if state not in LIST_STATES:
            raise ValueError(f"state must be one of {', '.join(LIST_STATES)}, got {state!r}")
        client = self.client
        if state == "dead":
            return await self.list_dead(limit)
        if state in ("delivered", "not_recorded"):
            rows: builtins.list[OutboxRow] = []
            start = "-"
            while len(rows) < limit:
                entries = await client.xrange(self.done_key, min=start, count=500)
                if not entries:
                    break
                for entry_id, fields in entries:
                    row = load_row(entry_id, fields, "delivered")
                    if state == "delivered" or row.outcome in NOT_RECORDED_OUTCOMES:
                        rows.append(row)
                start = "(" + entries[-1][0]
            return rows[:limit]
        try:
            held = await client.xpending_range(self.stream, self.group, "-", "+", 10_000)
        except Exception:
            held = []
        inflight = {p["message_id"] for p in held}
        if state == "inflight":
            found = []
            for entry_id in sorted(inflight)[:limit]:
                for eid, fields in await client.xrange(self.stream, entry_id, entry_id):
                    found.append(load_row(eid, fields, "inflight"))
            return found
        pending = [
            load_row(eid, fields)
            for eid, fields in await client.xrange(self.stream, count=limit + len(inflight))
            if eid not in inflight
        ]
        for member in await client.zrange(self.retry_key, 0, limit):
            pending.append(load_row("", {"row": member}))
        return pending[:limit]

    async def retry_dead(
        self, event_ids: Sequence[str] | None = None, *, force: bool = False
    ) -> int:
        """Move dead letters back onto the stream with a fresh budget (``click_not_found``
        dead letters only with ``force``)."""
        wanted = None if event_ids is None else set(event_ids)
        moved = 0
        start = "-"
        while True:
            entries = await self.client.xrange(self.dead_key, min=start, count=500)
            if not entries:
                return moved
            for entry_id, fields in entries:
                row = load_row(entry_id, fields, "dead")
                if wanted is not None and row.event_id not in wanted:
                    continue
                why = refused_retry(row)
                if why is not None and not force:
                    logger.warning(
                        "dead letter %s not retried (%s): %s", row.event_id, row.error_code, why
                    )
                    continue
                fresh = restart_budget(row, self.now())
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.xadd(self.stream, {"row": dump_row(fresh)})
                    pipe.xdel(self.dead_key, entry_id)
                    await pipe.execute()
                moved += 1
            start = "(" + entries[-1][0]

    async def purge_delivered(self, older_than: float) -> int:
        """Trim the kept delivered rows older than ``older_than`` seconds (the stream entries
        themselves are deleted as soon as they are acknowledged)."""
        cutoff = int(max(0.0, self.now() - older_than) * 1000)
        removed: int = await self.client.xtrim(self.done_key, minid=f"{cutoff}-0")
        return removed
