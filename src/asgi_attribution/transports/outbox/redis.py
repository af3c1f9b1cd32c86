"""The outbox across machines: Redis Streams with a consumer group.

Layout under ``prefix`` (default ``asgi-attribution:outbox``):
- ``{prefix}:stream``: events to deliver (``XADD``); workers read them through the consumer group
  ``delivery`` (``XREADGROUP``), ``XACK`` + ``XDEL`` them once delivered, and take over entries a
  dead consumer left pending for longer than the lease (``XAUTOCLAIM``).
- ``{prefix}:retry``: a sorted set of events waiting for their next attempt, scored by due time;
  a Lua script moves due ones back onto the stream atomically.
- ``{prefix}:dead``: a stream of dead letters with their last error.
- ``{prefix}:delivered``: a counter; delivered entries are deleted at once, not kept.

Each move between these keys is one ``MULTI``/``EXEC`` transaction, so an event is never in two
places nor in none. Needs ``pip install 'asgi-attribution[redis]'`` (redis-py 5 or later).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..._exceptions import OutboxError
from .store import AppendBatcher, OutboxRow, OutboxStatus, OutboxStore, restart_budget

__all__ = ["RedisOutbox"]

logger = logging.getLogger("asgi_attribution")

# Move up to ARGV[2] retries due by ARGV[1] from the sorted set KEYS[1] onto the stream KEYS[2].
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'row', member)
end
return #due
"""


def _require_redis() -> Any:
    try:
        import redis.asyncio
    except ImportError:
        raise OutboxError(
            "the Redis outbox needs redis-py: pip install 'asgi-attribution[redis]'"
        ) from None
    return redis.asyncio


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class RedisOutbox(OutboxStore):
    """An outbox in Redis Streams, shared by app instances and workers on many machines.

    ``url`` is a redis-py URL (``redis://host:6379/0``, ``rediss://`` for TLS); ``prefix`` names
    the keys, so several apps can share one Redis. ``consumer`` names this worker in the group
    (default: host, pid and a random suffix); ``max_connections`` bounds the pool. Durability is
    Redis's: enable ``appendonly yes`` (with ``appendfsync everysec`` or ``always``) on the server.

    Example:
        >>> store = RedisOutbox("redis://127.0.0.1:6379/0", prefix="myapp:outbox")
        >>> tracker = Tracker("dub", api_key="dub_xxx", outbox=store, deliver=False)
        >>> store.stream  # nothing connects before the tracker starts
        'myapp:outbox:stream'
    """

    group = "delivery"
    option_prefixes = ("redis://", "rediss://", "unix://")

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "asgi-attribution:outbox",
        consumer: str | None = None,
        max_connections: int = 20,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self.prefix = prefix
        self.stream = f"{prefix}:stream"
        self.retry_key = f"{prefix}:retry"
        self.dead_key = f"{prefix}:dead"
        self.delivered_key = f"{prefix}:delivered"
        self.description = f"{_safe_url(url)} ({prefix})"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._redis: Any = None
        self._promote: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cursor = "0-0"
        self._batcher = AppendBatcher(self._append_many)

    def __repr__(self) -> str:
        return f"RedisOutbox({self.description!r})"

    async def open(self) -> None:
        """Connect, check the server answers, and create the consumer group if needed."""
        loop = asyncio.get_running_loop()
        if self._redis is not None and self._loop is loop:
            return
        # A client of an event loop that ended cannot be used (or closed) from this one.
        self._redis = self._promote = None
        self._loop = loop
        aioredis = _require_redis()
        from redis.exceptions import RedisError, ResponseError

        # A blocking pool: a burst waits for a free connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, timeout=30, decode_responses=True
        )
        client = aioredis.Redis.from_pool(pool)
        try:
            await client.ping()
            try:
                # "0": entries appended before any worker existed are delivered too.
                await client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise OutboxError(f"cannot use Redis outbox {self.description}: {exc}") from None
        self._redis = client
        self._promote = client.register_script(_PROMOTE)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._batcher.wait()
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    @property
    def _client(self) -> Any:
        if self._redis is None:
            raise OutboxError(f"outbox {self.description} is not open")
        return self._redis

    # -- rows <-> entries ----------------------------------------------------------------------

    @staticmethod
    def _dump(row: OutboxRow) -> str:
        data = {
            "event_id": row.event_id,
            "provider": row.provider,
            "kind": row.kind,
            "event": row.event,
            "attempts": row.attempts,
            "first_attempt_at": row.first_attempt_at,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "last_error": row.last_error,
        }
        return json.dumps(data, separators=(",", ":"))

    @staticmethod
    def _load(entry_id: str, fields: dict[str, str], state: str = "pending") -> OutboxRow:
        data = json.loads(fields["row"])
        return OutboxRow(
            event_id=data["event_id"],
            provider=data["provider"],
            kind=data["kind"],
            event=data["event"],
            state=state,  # type: ignore[arg-type]
            attempts=int(data.get("attempts", 0)),
            last_error=data.get("last_error"),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            first_attempt_at=data.get("first_attempt_at"),
            handle=entry_id,
        )

    # -- appends, claims and outcomes ---------------------------------------------------------

    async def append(self, row: OutboxRow) -> None:
        """``XADD`` the event to the stream; concurrent appends share one pipeline."""
        await self._batcher.add(row)

    async def _append_many(self, rows: list[OutboxRow]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xadd(self.stream, {"row": self._dump(row)})
            await pipe.execute()

    async def claim(self, limit: int, lease: float) -> list[OutboxRow]:
        """Promote due retries, take over entries idle longer than ``lease``, read new ones."""
        client = self._client
        now = time.time()
        await self._promote(keys=[self.retry_key, self.stream], args=[now, max(limit, 100)])
        entries: list[tuple[str, dict[str, str]]] = []
        # A consumer that died (or stalled past its lease) leaves entries pending: take them.
        cursor, taken, *_ = await client.xautoclaim(
            self.stream, self.group, self.consumer, int(lease * 1000), self._cursor, count=limit
        )
        self._cursor = cursor  # resume the scan next time; "0-0" when it wrapped around
        entries.extend(e for e in taken if e and e[1])
        if len(entries) < limit:
            read = await client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=limit - len(entries)
            )
            for _stream, stream_entries in read or []:
                entries.extend(e for e in stream_entries if e and e[1])
        rows = []
        for entry_id, fields in entries:
            row = self._load(entry_id, fields, "inflight")
            rows.append(
                replace(
                    row,
                    attempts=row.attempts + 1,
                    first_attempt_at=row.first_attempt_at or now,
                    updated_at=now,
                )
            )
        return rows

    async def _finish(self, row: OutboxRow, *extra: tuple[str, tuple[Any, ...]]) -> None:
        # A worker that stalled past its lease may have lost the entry to another consumer
        # (XAUTOCLAIM): then the other one decides, and this outcome is not recorded, as the
        # SQLite store's lease owner check does. (Between this check and the write there is a
        # window of one round trip, not of a whole stall.)
        owned = await self._client.xpending_range(
            self.stream, self.group, row.handle, row.handle, 1, consumername=self.consumer
        )
        if not owned:
            logger.info("event %s: claim taken over by another worker; not recorded", row.event_id)
            return
        async with self._client.pipeline(transaction=True) as pipe:
            for command, args in extra:
                getattr(pipe, command)(*args)
            pipe.xack(self.stream, self.group, row.handle)
            pipe.xdel(self.stream, row.handle)
            await pipe.execute()

    async def delivered(self, row: OutboxRow) -> None:
        """``XACK`` and delete the entry; count it."""
        await self._finish(row, ("incr", (self.delivered_key,)))

    async def retry_later(self, row: OutboxRow, at: float, error: str) -> None:
        """Move the entry to the retry set, due at ``at``."""
        later = replace(row, last_error=error, updated_at=time.time())
        await self._finish(row, ("zadd", (self.retry_key, {self._dump(later): at})))

    async def dead(self, row: OutboxRow, error: str) -> None:
        """Move the entry to the dead-letter stream with its last error."""
        dead = replace(row, last_error=error, updated_at=time.time())
        await self._finish(row, ("xadd", (self.dead_key, {"row": self._dump(dead)})))

    async def release(self, rows: Sequence[OutboxRow]) -> None:
        """Re-add unfinished claims as new entries so any worker takes them at once."""
        for row in rows:
            back = replace(row, attempts=max(row.attempts - 1, 0))
            await self._finish(row, ("xadd", (self.stream, {"row": self._dump(back)})))

    # -- inspection and maintenance -----------------------------------------------------------

    async def _counts(self) -> tuple[int, int, int, int, int]:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xlen(self.stream)
            pipe.xpending(self.stream, self.group)
            pipe.zcard(self.retry_key)
            pipe.xlen(self.dead_key)
            pipe.get(self.delivered_key)
            length, pending_info, retries, dead, delivered = await pipe.execute()
        inflight = int(pending_info["pending"]) if pending_info else 0
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
        first = await self._client.xrange(self.stream, count=1)
        if first:
            oldest = int(first[0][0].split("-")[0]) / 1000
        earliest_retry = await self._client.zrange(self.retry_key, 0, 0)
        if earliest_retry:
            created = float(json.loads(earliest_retry[0]).get("created_at", 0.0))
            oldest = created if oldest is None else min(oldest, created)
        age = None if oldest is None else max(0.0, time.time() - oldest)
        return OutboxStatus(counts, age)

    async def list_dead(self, limit: int = 100) -> list[OutboxRow]:
        """Dead letters, oldest first."""
        entries = await self._client.xrange(self.dead_key, count=limit)
        return [self._load(entry_id, fields, "dead") for entry_id, fields in entries]

    async def retry_dead(self, event_ids: Sequence[str] | None = None) -> int:
        """Move dead letters back onto the stream with a fresh budget."""
        wanted = None if event_ids is None else set(event_ids)
        moved = 0
        start = "-"
        while True:
            entries = await self._client.xrange(self.dead_key, min=start, count=500)
            if not entries:
                return moved
            for entry_id, fields in entries:
                row = self._load(entry_id, fields, "dead")
                if wanted is not None and row.event_id not in wanted:
                    continue
                fresh = restart_budget(row, time.time())
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.xadd(self.stream, {"row": self._dump(fresh)})
                    pipe.xdel(self.dead_key, entry_id)
                    await pipe.execute()
                moved += 1
            start = "(" + entries[-1][0]

    async def purge_delivered(self, older_than: float) -> int:
        """Nothing to purge: delivered entries are deleted as soon as they are acknowledged."""
        return 0
