"""The outbox across machines: Redis Streams with a consumer group.

Layout under ``prefix`` (default ``asgi-attribution:outbox``):
- ``{prefix}:stream``: events to deliver (``XADD``); workers read them through the consumer group
  ``delivery`` (``XREADGROUP``), ``XACK`` + ``XDEL`` them once delivered, and take over entries a
  dead consumer left pending for longer than the lease (``XAUTOCLAIM``, the server's clock).
- ``{prefix}:retry``: a sorted set of events waiting for their next attempt, scored by due time
  in the server's clock (``TIME``); a Lua script moves due ones back onto the stream.
- ``{prefix}:dead``: a stream of dead letters with their last error.
- ``{prefix}:delivered``: a counter; ``{prefix}:done``: the latest delivered rows with their
  outcome (capped at ``keep_delivered``, trimmed to ``retention``).

Each move between these keys is one Lua script flagged ``allow-oom`` that first checks this
consumer still holds the entry, so an event is never in two places nor in none, and a Redis at
``maxmemory`` still drains. Attempt counts are the row's plus the entry's delivery count, so an
event whose attempt kills its worker still runs out of budget. A consumer group lost with the
server's data is created again (logged at ERROR). Needs ``pip install 'asgi-attribution[redis]'``.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..._exceptions import OutboxError
from .batcher import AppendBatcher
from .redis_inspect import RedisInspection
from .redis_rows import dump_row, entry_time, load_row, require_redis, safe_url
from .redis_server import FINISH, PROMOTE, ServerFacts, check_server, script
from .rows import OutboxRow
from .store import OutboxStore

__all__ = ["RedisOutbox"]

logger = logging.getLogger("asgi_attribution")
DAY = 86_400.0


class RedisOutbox(RedisInspection, OutboxStore):
    """An outbox in Redis Streams, shared by app instances and workers on many machines.

    ``url`` is a redis-py URL (``redis://host:6379/0``, ``rediss://`` for TLS); ``prefix`` names
    the keys, so several apps can share one Redis. ``consumer`` names this worker in the group
    (default: host, pid and a random suffix); ``max_connections`` bounds the pool. Every command
    is bounded by ``append_timeout`` (socket, connect and pool waits: 2 s), whatever redis-py's
    defaults. At open the server must not evict (``maxmemory-policy noeviction``; an
    ``allkeys-*`` policy is refused unless ``allow_eviction=True``) and should log every write
    (``appendonly yes``): without it appends return ``durable=False``. ``keep_delivered``
    delivered rows (with their outcome) are kept for ``retention`` seconds, for ``list``.

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
        append_timeout: float = 2.0,
        allow_eviction: bool = False,
        retention: float = 7 * DAY,
        keep_delivered: int = 10_000,
    ) -> None:
        if append_timeout <= 0 or retention < 0 or keep_delivered < 0:
            raise ValueError("append_timeout must be > 0, retention and keep_delivered >= 0")
        self.url = url
        self.max_connections = max_connections
        self.append_timeout = append_timeout
        self.allow_eviction = allow_eviction
        self.retention = retention
        self.keep_delivered = keep_delivered
        self.prefix = prefix
        self.stream = f"{prefix}:stream"
        self.retry_key = f"{prefix}:retry"
        self.dead_key = f"{prefix}:dead"
        self.delivered_key = f"{prefix}:delivered"
        self.done_key = f"{prefix}:done"
        self.description = f"{safe_url(url)} ({prefix})"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        #: What the server said at open (None before).
        self.facts: ServerFacts | None = None
        #: What is wrong with the server for an outbox (no AOF, eviction, a lost stream).
        self.problems: builtins.list[str] = []
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cursor = "0-0"
        self._offset = 0.0  # server time minus time.monotonic()
        self._lease = 60.0
        self._backlog = 0  # the unfinished events last seen (for "N events may be gone")
        self._batcher = AppendBatcher(self._append_many)

    def __repr__(self) -> str:
        return f"RedisOutbox({self.description!r})"

    async def open(self) -> None:
        """Connect, check the server's policy and persistence, create the group if needed."""
        loop = asyncio.get_running_loop()
        if self._redis is not None and self._loop is loop:
            return
        # A client of an event loop that ended cannot be used (or closed) from this one.
        self._redis, self._scripts, self._loop = None, {}, loop
        aioredis = require_redis()
        from redis.exceptions import RedisError

        # A blocking pool: a burst waits for a free connection, but never past append_timeout;
        # explicit socket timeouts (redis-py 5.0 has none by default: a hung server hangs it).
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.append_timeout,
            socket_timeout=self.append_timeout,
            socket_connect_timeout=self.append_timeout,
            decode_responses=True,
        )
        client = aioredis.Redis.from_pool(pool)
        try:
            await client.ping()
            facts = await check_server(client, self.description, self.allow_eviction)
            await self._ensure_group(client)
            await self._sync_clock(client)
        except OutboxError:
            await client.aclose()
            raise
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise OutboxError(f"cannot use Redis outbox {self.description}: {exc}") from None
        self.facts = facts
        self.durable = facts.persistent and not facts.evicts
        self.problems = []
        if not facts.persistent:
            self.problems.append("no append-only file: appends are not durable")
        if facts.evicts:
            self.problems.append(f"maxmemory-policy {facts.policy} may evict events")
        self._redis = client
        for name, body in (("promote", PROMOTE), ("finish", FINISH)):
            self._scripts[name] = client.register_script(script(body, facts.version))

    async def _ensure_group(self, client: Any) -> bool:
        """Create the consumer group unless it exists; True if it was created."""
        from redis.exceptions import ResponseError

        # Read first: XGROUP CREATE is refused at maxmemory, and a full Redis must still open.
        try:
            groups = await client.xinfo_groups(self.stream)
        except ResponseError:
            groups = []  # no such key yet
        if any(g.get("name") == self.group for g in groups):
            return False
        try:
            # "0": entries appended before any worker existed are delivered too.
            await client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def _sync_clock(self, client: Any) -> None:
        seconds, micros = await client.time()
        self._offset = seconds + micros / 1e6 - time.monotonic()

    def now(self) -> float:
        """The server's clock (``TIME``, read at open and at each claim)."""
        return time.monotonic() + self._offset

    async def close(self) -> None:
        """Close the connection pool."""
        await self._batcher.wait()
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> Any:
        """The open redis-py client (raises :class:`OutboxError` when not open)."""
        if self._redis is None:
            raise OutboxError(f"outbox {self.description} is not open")
        return self._redis

    # -- appends, claims and outcomes ---------------------------------------------------------

    async def append(self, row: OutboxRow) -> None:
        """``XADD`` the event to the stream; concurrent appends share one pipeline."""
        await self._batcher.add(row)

    async def _append_many(self, rows: builtins.list[OutboxRow]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xadd(self.stream, {"row": dump_row(row)})
            await pipe.execute()
        self._backlog += len(rows)

    async def claim(self, limit: int, lease: float) -> builtins.list[OutboxRow]:
        """Promote due retries, take over entries idle longer than ``lease``, read new ones."""
        from redis.exceptions import ResponseError

        try:
            return await self._claim(limit, lease)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        if await self._ensure_group(self.client):
            lost = f"up to {self._backlog}" if self._backlog else "an unknown number of"
            message = (
                f"outbox {self.description}: stream lost (its consumer group was gone: Redis "
                f"restarted without its data, or the key was deleted): {lost} events may be "
                "gone; the group was created again and delivery goes on"
            )
            logger.error("%s", message)
            self.problems.append(message)
            self._backlog, self._cursor = 0, "0-0"
        return await self._claim(limit, lease)

    async def _claim(self, limit: int, lease: float) -> builtins.list[OutboxRow]:
        client = self.client
        self._lease = lease
        await self._sync_clock(client)
        now = self.now()
        await self._scripts["promote"](keys=[self.retry_key, self.stream], args=[max(limit, 100)])
        entries: builtins.list[tuple[str, dict[str, str]]] = []
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
        if not entries:
            return []
        # Attempts persist: the row's count plus this entry's deliveries (a takeover of an
        # entry whose worker died counts, so a poison event still runs out of budget).
        ids = sorted((e[0] for e in entries), key=lambda i: tuple(map(int, i.split("-"))))
        pending = await client.xpending_range(
            self.stream, self.group, ids[0], ids[-1], len(ids) * 2 + 10, self.consumer
        )
        delivered = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        rows = []
        for entry_id, fields in entries:
            row = load_row(entry_id, fields, "inflight")
            times = delivered.get(entry_id, 1)
            first = row.first_attempt_at or (entry_time(entry_id) if times > 1 else now)
            rows.append(
                replace(row, attempts=row.attempts + times, first_attempt_at=first, updated_at=now)
            )
        return rows

    async def _finish(
        self, row: OutboxRow, action: str, target: str, payload: str, arg: float
    ) -> None:
        # One script, allowed at maxmemory: check this consumer still holds the entry (a
        # worker whose lease was taken over records nothing), move or count it, XACK + XDEL.
        done = await self._scripts["finish"](
            keys=[self.stream, target, self.delivered_key],
            args=[self.group, self.consumer, row.handle, action, payload, arg],
        )
        if not done:
            logger.info("event %s: claim taken over by another worker; not recorded", row.event_id)
        else:
            self._backlog = max(0, self._backlog - 1)

    async def delivered(self, row: OutboxRow) -> None:
        """``XACK`` and delete the entry; count it and keep it (with its outcome) in ``done``."""
        kept = replace(row, state="delivered", updated_at=self.now())
        await self._finish(row, "delivered", self.done_key, dump_row(kept), self.keep_delivered)

    async def retry_later(self, row: OutboxRow, at: float, error: str) -> None:
        """Move the entry to the retry set, due at ``at`` (server time)."""
        later = replace(row, last_error=error, updated_at=self.now(), next_attempt_at=at)
        await self._finish(row, "retry", self.retry_key, dump_row(later), at)

    async def dead(self, row: OutboxRow, error: str) -> None:
        """Move the entry to the dead-letter stream with its last error."""
        dead = replace(row, last_error=error, updated_at=self.now())
        await self._finish(row, "move", self.dead_key, dump_row(dead), 0)

    async def release(self, rows: Sequence[OutboxRow]) -> None:
        """Re-add unfinished claims as new entries so any worker takes them at once."""
        for row in rows:
            back = replace(row, attempts=max(row.attempts - 1, 0))
            await self._finish(row, "move", self.stream, dump_row(back), 0)

    async def maintain(self) -> None:
        """Trim delivered rows past ``retention``; remove consumers idle past the lease."""
        client = self.client
        cutoff = int((self.now() - self.retention) * 1000)
        await client.xtrim(self.done_key, minid=f"{max(cutoff, 0)}-0", approximate=True)
        from redis.exceptions import ResponseError

        try:
            consumers = await client.xinfo_consumers(self.stream, self.group)
        except ResponseError:
            return
        for consumer in consumers:
            idle = int(consumer.get("idle", 0)) / 1000
            name = consumer.get("name")
            # Only without entries: XGROUP DELCONSUMER drops the entries a consumer holds.
            if (
                name != self.consumer
                and int(consumer.get("pending", 0)) == 0
                and idle > self._lease
            ):
                await client.xgroup_delconsumer(self.stream, self.group, name)
