"""Remembering which webhook ids were handled: in memory, in a SQLite file, or in Redis.

Providers deliver webhooks at least once and retry for days, so an endpoint answers 2xx to an id
it already handled without running the handler again. An id is remembered only after its
handler succeeded (a failed one must run again on the retry), for ``ttl`` seconds (30 days by
default, longer than any provider retries).

Example:
    >>> import asyncio
    >>> store = open_dedupe(None)
    >>> async def demo():
    ...     before = await store.seen("evt_1")
    ...     await store.mark("evt_1")
    ...     return before, await store.seen("evt_1")
    >>> asyncio.run(demo())
    (False, True)
"""

from __future__ import annotations

import asyncio
import collections
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread

from ._exceptions import AttributionError

__all__ = [
    "THIRTY_DAYS",
    "DedupeStore",
    "MemoryDedupe",
    "RedisDedupe",
    "SQLiteDedupe",
    "open_dedupe",
]

THIRTY_DAYS = 30 * 24 * 60 * 60


@runtime_checkable
class DedupeStore(Protocol):
    """What :func:`~asgi_attribution.webhooks.webhook_endpoint` needs to skip redeliveries.

    Example:
        >>> isinstance(MemoryDedupe(), DedupeStore)
        True
    """

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was handled (and marked) within the store's ``ttl``."""

    async def mark(self, event_id: str) -> None:
        """Remember that ``event_id`` was handled."""

    async def aclose(self) -> None:
        """Release connections; the store may be used again after (it reconnects)."""


class MemoryDedupe:
    """Ids in this process's memory: fine for one process; lost on restart.

    At most ``max_entries`` ids are kept (the oldest are forgotten first).

    Example:
        >>> MemoryDedupe(ttl=60, max_entries=1000).ttl
        60
    """

    def __init__(self, *, ttl: float = THIRTY_DAYS, max_entries: int = 100_000) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("MemoryDedupe needs ttl > 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._ids: collections.OrderedDict[str, float] = collections.OrderedDict()

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was marked less than ``ttl`` seconds ago."""
        at = self._ids.get(event_id)
        return at is not None and time.monotonic() - at < self.ttl

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` now."""
        self._ids[event_id] = time.monotonic()
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.max_entries:
            self._ids.popitem(last=False)

    async def aclose(self) -> None:
        """Nothing to release."""


class SQLiteDedupe:
    """Ids in a SQLite file, shared by the processes of one host; survives restarts.

    The file and its table are created on first use; calls run in a worker thread.

    Example:
        >>> import asyncio, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "webhooks.db")
        >>> store = SQLiteDedupe(path)
        >>> asyncio.run(store.mark("evt_1")); asyncio.run(store.seen("evt_1"))
        True
        >>> asyncio.run(store.aclose())
    """

    def __init__(self, path: str | os.PathLike[str], *, ttl: float = THIRTY_DAYS) -> None:
        if ttl <= 0:
            raise ValueError("SQLiteDedupe needs ttl > 0")
        self.path = Path(path)
        self.ttl = ttl
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS webhook_events "
                    "(id TEXT PRIMARY KEY, seen_at REAL NOT NULL)"
                )
                db.execute("CREATE INDEX IF NOT EXISTS webhook_seen_at ON webhook_events(seen_at)")
                db.commit()
            except sqlite3.Error as exc:
                raise AttributionError(f"webhook dedupe store {self.path}: {exc}") from exc
            self._db = db
        return self._db

    def _seen(self, event_id: str) -> bool:
        with self._lock:
            row = (
                self._connect()
                .execute(
                    "SELECT 1 FROM webhook_events WHERE id = ? AND seen_at > ?",
                    (event_id, time.time() - self.ttl),
                )
                .fetchone()
            )
        return row is not None

    def _mark(self, event_id: str) -> None:
        now = time.time()
        with self._lock:
            db = self._connect()
            db.execute("INSERT OR REPLACE INTO webhook_events VALUES (?, ?)", (event_id, now))
            db.execute("DELETE FROM webhook_events WHERE seen_at <= ?", (now - self.ttl,))
            db.commit()

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was marked less than ``ttl`` seconds ago."""
        return await anyio.to_thread.run_sync(self._seen, event_id)

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` now (and forget ids older than ``ttl``)."""
        await anyio.to_thread.run_sync(self._mark, event_id)

    async def aclose(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RedisDedupe:
    """Ids in Redis (``SET ... EX ttl``), shared by every process; needs redis-py.

    Example:
        >>> RedisDedupe("redis://127.0.0.1:6379/0", prefix="myapp:webhooks").prefix
        'myapp:webhooks'
    """

    def __init__(
        self, url: str, *, ttl: float = THIRTY_DAYS, prefix: str = "asgi_attribution:webhooks"
    ) -> None:
        if ttl < 1:
            raise ValueError("RedisDedupe needs ttl >= 1 second")
        self.url = url
        self.ttl = int(ttl)
        self.prefix = prefix
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            try:
                import redis.asyncio as aioredis
            except ImportError:  # pragma: no cover - depends on the environment
                raise AttributionError(
                    "a Redis dedupe store needs redis-py: pip install 'asgi-attribution[redis]'"
                ) from None
            self._client = aioredis.Redis.from_url(self.url)
            self._loop = loop
        return self._client

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` is in Redis (keys expire after ``ttl``)."""
        return bool(await self._redis().exists(f"{self.prefix}:{event_id}"))

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` for ``ttl`` seconds."""
        await self._redis().set(f"{self.prefix}:{event_id}", b"1", ex=self.ttl)

    async def aclose(self) -> None:
        """Close the client of the current loop."""
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()


def open_dedupe(spec: DedupeStore | str | os.PathLike[str] | None) -> DedupeStore:
    """The store for ``dedupe=``: ``None`` (memory), a ``redis://`` / ``rediss://`` URL, a
    SQLite file path, or a store of your own.

    Example:
        >>> type(open_dedupe(None)).__name__, type(open_dedupe("redis://localhost/0")).__name__
        ('MemoryDedupe', 'RedisDedupe')
        >>> type(open_dedupe("/var/lib/acme/webhooks.db")).__name__
        'SQLiteDedupe'
    """
    if spec is None:
        return MemoryDedupe()
    if isinstance(spec, str) and spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisDedupe(spec)
    if isinstance(spec, (str, os.PathLike)):
        if not str(spec):
            raise ValueError("dedupe path is empty: pass None (memory), a file path or a URL")
        return SQLiteDedupe(spec)
    if isinstance(spec, DedupeStore):
        return spec
    raise TypeError(f"dedupe must be None, a path, a redis:// URL or a DedupeStore, got {spec!r}")
