"""The outbox across machines: Redis Streams with a consumer group.

Layout under ``prefix`` (default ``asgi-attribution:outbox``), each row one JSON field:
- ``{prefix}:stream``: events to deliver (``XADD``); workers read them through the consumer group
  ``delivery`` (``XREADGROUP``), ``XACK`` + ``XDEL`` them once delivered, and take over entries a
  dead consumer left pending for longer than the lease (``XAUTOCLAIM``, the server's clock).
- ``{prefix}:retry``: a sorted set of events waiting for their next attempt, scored by due time
  in the server's clock (``TIME``); a Lua script moves due ones back onto the stream.
- ``{prefix}:dead``: a stream of dead letters with their last error.
- ``{prefix}:leads`` and ``{prefix}:sales``: hashes of the unfinished holders of each order
  key, leads per ``provider:customer`` and sales per ``provider:invoice id`` (counted up by the
  append, down when the holder is delivered or dead): a claim gives a row whose wait key has a
  count (a customer's sale or update, a refund of an invoice) back to the retry set for a
  moment, unattempted, so no worker sends a sale before its customer's lead is answered, nor
  a refund before its sale is.
- ``{prefix}:delivered``: a counter; ``{prefix}:done``: the latest delivered rows with their
  outcome (capped at ``keep_delivered``, trimmed to ``retention``).

Each move between these keys is one Lua script that first checks this consumer still holds the
entry, so an event is never in two places nor in none. Attempt counts are the row's plus the
entry's delivery count, so an event whose attempt kills its worker still runs out of budget. A
consumer group lost with the server's data is created again (logged at ERROR).

What the server must provide, checked at open:
- ``maxmemory-policy``: an ``allkeys-*`` policy evicts the outbox's keys when memory is full
  and loses events silently: refused unless ``allow_eviction=True``. (``volatile-*`` policies
  evict only keys with a TTL; the outbox sets none.)
- Persistence: without the append-only file (``appendonly yes``) a restart of redis-server
  loses what it held (RDB snapshots keep only what was saved): appends return
  ``durable=False`` and a WARNING says so. Such a store (or one allowed to evict) keeps a copy
  of each row this process appended or claimed until it sees the row finished or gone to
  another worker; when the data set is lost (the ``{prefix}:epoch`` key it writes at open is
  gone or changed) it appends those rows again and names them by id at ERROR, so
  ``durable=False`` means "in this process", as with the in-memory queue.
- A write that reaches the server after its caller gave up (``append_timeout``: the server
  was hung) is refused by the server (its ``TIME`` against the write's deadline): the caller's
  copy went to the fallback, and the event is delivered once.
- Redis 7+: the scripts are flagged ``allow-oom``, so a Redis at ``maxmemory`` with
  ``noeviction`` still acknowledges and moves entries: a full Redis drains.

The same store answers the CLI (counts, rows by state, dead letters). Needs ``[redis]``.

One concept, the outbox as Redis keys, in about 1,000 lines: the Lua scripts that move an
entry, the order hashes, the CLI's reads and the copies kept while the server may lose them all
act on the same keys and entry ids; split by kind, each part would need the others' layout.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..._events import OrderKey
from ..._exceptions import OutboxError
from ._store import (
    LIST_STATES,
    NOT_RECORDED_OUTCOMES,
    AppendBatcher,
    ListState,
    OutboxRow,
    OutboxStatus,
    OutboxStore,
    State,
    refused_retry,
    restart_budget,
)

__all__ = [
    "APPEND",
    "FINISH",
    "PROMOTE",
    "RedisInspection",
    "RedisOutbox",
    "ServerFacts",
    "check_server",
    "dump_row",
    "entry_time",
    "load_row",
    "require_redis",
    "safe_url",
    "script",
]


logger = logging.getLogger("asgi_attribution")

# Move up to ARGV[1] retries due by the server's TIME from the sorted set KEYS[1] onto the
# stream KEYS[2].
PROMOTE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'row', member)
end
return #due
"""

# Append the ARGV[3] rows ARGV[4..] to the stream KEYS[1] unless the server's TIME is past
# ARGV[1] (a write that reaches a hung server after its caller gave up must not land: the
# caller's copy went elsewhere). The ARGV[3] values after the rows name the order key each row
# holds ('' for none), counted in the hash KEYS[n] its first character n (3: leads, 4: sales)
# names. KEYS[2] holds the data set's epoch: set
# to ARGV[2] if missing (the data was lost), returned first so the caller learns of a loss.
# Returns {epoch, id1, id2, ...}.
APPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if now > tonumber(ARGV[1]) then
  return redis.error_reply('LATE: past its append_timeout when it reached the server: not written')
end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  redis.call('SET', KEYS[2], ARGV[2])
  epoch = ARGV[2]
end
local out = {epoch}
local n = tonumber(ARGV[3])
for i = 4, 3 + n do
  out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'row', ARGV[i])
  local holds = ARGV[i + n]
  if holds ~= '' then
    redis.call('HINCRBY', KEYS[tonumber(string.sub(holds, 1, 1))], string.sub(holds, 2), 1)
  end
end
return out
"""

# Finish the entry ARGV[3] of the stream KEYS[1] if the consumer ARGV[2] of group ARGV[1] still
# holds it (checked atomically: a worker whose lease was taken over records nothing). ARGV[4]:
# delivered (count in KEYS[3], keep ARGV[5] in the stream KEYS[2], capped at ARGV[6]), retry
# (ZADD ARGV[5] to KEYS[2] scored ARGV[6]), move (XADD ARGV[5] to the stream KEYS[2]: returns
# the new entry's id). ARGV[7], when not '': the order key a finished row held, counted down
# in the hash KEYS[n] its first character n names (4: leads, 5: sales).
FINISH = """
local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #owned == 0 then return 0 end
if ARGV[7] ~= '' then
  local hash, key = KEYS[tonumber(string.sub(ARGV[7], 1, 1))], string.sub(ARGV[7], 2)
  if redis.call('HINCRBY', hash, key, -1) <= 0 then redis.call('HDEL', hash, key) end
end
local moved = false
if ARGV[4] == 'delivered' then
  redis.call('INCR', KEYS[3])
  if tonumber(ARGV[6]) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'row', ARGV[5])
  end
elseif ARGV[4] == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
else
  moved = redis.call('XADD', KEYS[2], '*', 'row', ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return moved or 1
"""


def script(body: str, version: tuple[int, ...]) -> str:
    """``body`` flagged ``allow-oom`` where the server knows script flags (Redis 7+).

    Example:
        >>> script("return 1", (7, 2, 4)).splitlines()[0]
        '#!lua flags=allow-oom'
        >>> script("return 1", (6, 2)).startswith("#!")
        False
    """
    return f"#!lua flags=allow-oom\n{body}" if version >= (7,) else body


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the server said at open: version, eviction policy, persistence.

    Example:
        >>> facts = ServerFacts((7, 0, 15), "noeviction", aof=True, rdb=False)
        >>> facts.evicts, facts.persistent
        (False, True)
    """

    version: tuple[int, ...]
    policy: str
    aof: bool
    rdb: bool

    @property
    def evicts(self) -> bool:
        """True when the policy may evict keys without a TTL (the outbox's keys)."""
        return self.policy.startswith("allkeys-")

    @property
    def persistent(self) -> bool:
        """True when every write is logged to the append-only file."""
        return self.aof


async def check_server(client: Any, description: str, allow_eviction: bool) -> ServerFacts:
    """Read the server's facts (``INFO``, ``CONFIG GET save`` where allowed) and judge them.

    Raises a one-line :class:`OutboxError` for an evicting policy unless ``allow_eviction``;
    logs a WARNING for a server without AOF.
    """
    server = await client.info("server")
    memory = await client.info("memory")
    persistence = await client.info("persistence")
    version = tuple(int(p) for p in str(server.get("redis_version", "0")).split(".") if p.isdigit())
    try:
        save = (await client.config_get("save")).get("save", "")
    except Exception:  # CONFIG disabled (a managed Redis): RDB unknown, AOF still from INFO
        save = ""
    facts = ServerFacts(
        version,
        str(memory.get("maxmemory_policy", "noeviction")),
        aof=int(persistence.get("aof_enabled", 0)) == 1,
        rdb=bool(str(save).strip()),
    )
    if facts.evicts and not allow_eviction:
        raise OutboxError(
            f"Redis {description} has maxmemory-policy {facts.policy}, which evicts the "
            "outbox's keys when memory is full (events lost silently): set maxmemory-policy "
            "noeviction, or pass allow_eviction=True (--allow-eviction) to accept that"
        )
    if facts.evicts:
        logger.warning(
            "Redis %s has maxmemory-policy %s (allowed by allow_eviction): events may be "
            "evicted; appends return durable=False",
            description,
            facts.policy,
        )
    if not facts.persistent:
        logger.warning(
            "Redis %s has no append-only file (appendonly no%s): events it holds are lost if "
            "redis-server stops; appends return durable=False. Set appendonly yes "
            "(appendfsync everysec or always) on the server",
            description,
            ", RDB snapshots only" if facts.rdb else ", no RDB snapshots",
        )
    return facts


def require_redis() -> Any:
    """``redis.asyncio``, or an :class:`OutboxError` naming the extra to install."""
    try:
        import redis.asyncio
    except ImportError:
        raise OutboxError(
            "the Redis outbox needs redis-py: pip install 'asgi-attribution[redis]'"
        ) from None
    return redis.asyncio


def safe_url(url: str) -> str:
    """``url`` without its password.

    Example:
        >>> safe_url("redis://user:secret@cache:6379/0")
        'redis://user:***@cache:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def entry_time(entry_id: str) -> float:
    """The server time (seconds) at which a stream entry was added.

    Example:
        >>> entry_time("1800000000123-0")
        1800000000.123
    """
    return int(entry_id.split("-")[0]) / 1000


def dump_row(row: OutboxRow) -> str:
    """The JSON kept in an entry's ``row`` field.

    Example:
        >>> load_row("1-0", {"row": dump_row(OutboxRow("evt_1", "dub", "lead", {}))}).event_id
        'evt_1'
    """
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
        "error_code": row.error_code,
        "outcome": row.outcome,
        "outcome_reason": row.outcome_reason,
        "next_attempt_at": row.next_attempt_at,
    }
    return json.dumps(data, separators=(",", ":"))


def load_row(entry_id: str, fields: dict[str, str], state: State = "pending") -> OutboxRow:
    """The row of a stream entry (``handle`` is the entry id)."""
    data = json.loads(fields["row"])
    return OutboxRow(
        event_id=data["event_id"],
        provider=data["provider"],
        kind=data["kind"],
        event=data["event"],
        state=state,
        attempts=int(data.get("attempts", 0)),
        last_error=data.get("last_error"),
        created_at=float(data.get("created_at", 0.0)),
        updated_at=float(data.get("updated_at", 0.0)),
        first_attempt_at=data.get("first_attempt_at"),
        next_attempt_at=float(data.get("next_attempt_at") or 0.0),
        handle=entry_id,
        error_code=data.get("error_code"),
        outcome=data.get("outcome"),
        outcome_reason=data.get("outcome_reason"),
    )


class RedisInspection:
    """Counts, lists and dead-letter retries over the keys of a :class:`RedisOutbox`."""

    group: str
    stream: str
    retry_key: str
    dead_key: str
    delivered_key: str
    done_key: str
    order_hashes: dict[str, str]
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
                    holds = row.order[1]
                    if holds is not None:  # unfinished again
                        pipe.hincrby(self.order_hashes[holds[0]], holds[1], 1)
                    await pipe.execute()
                moved += 1
            start = "(" + entries[-1][0]

    async def purge_delivered(self, older_than: float) -> int:
        """Trim the kept delivered rows older than ``older_than`` seconds (the stream entries
        themselves are deleted as soon as they are acknowledged)."""
        cutoff = int(max(0.0, self.now() - older_than) * 1000)
        removed: int = await self.client.xtrim(self.done_key, minid=f"{cutoff}-0")
        return removed


DAY = 86_400.0

#: Seconds an event claimed while an earlier holder of its order key is unfinished waits before
#: a claim looks at it again.
HOLD = 0.25


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
        self.epoch_key = f"{prefix}:epoch"
        # The hash of each order key space's unfinished holders (their order is the scripts').
        self.order_hashes = {"customer": f"{prefix}:leads", "invoice": f"{prefix}:sales"}
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
        self.append_bound = append_timeout  # the batcher's timer: no task per signup
        self._batcher = AppendBatcher(self._append_many, timeout=append_timeout)
        # The data set this process writes to (changed: Redis lost its data), and, on a Redis
        # that may lose it, the rows this process answers for: event id -> (row, where the
        # row is: "stream" or "retry", its entry id or retry member).
        self._epoch: str | None = None
        self._held: dict[str, tuple[OutboxRow, str, str]] = {}
        self._next_confirm = 0.0
        self._confirming: asyncio.Task[None] | None = None
        self._loss_reported = False  # by an append, before the claim found the group gone
        self._claimed: set[str] = set()  # held rows this process is attempting now
        self._orphans: set[str] = set()  # ...whose entries went with a lost data set

    def __repr__(self) -> str:
        return f"RedisOutbox({self.description!r})"

    @property
    def held(self) -> int:
        """Rows this process keeps a copy of because the server may lose them (no AOF).

        Example:
            >>> RedisOutbox("redis://127.0.0.1:6379/0").held
            0
        """
        return len(self._held)

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
            self._epoch = await self._read_epoch(client)
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
        # Not allow-oom: a full Redis refuses new events (they go to the fallback).
        self._scripts["append"] = client.register_script(APPEND)

    async def _read_epoch(self, client: Any) -> str | None:
        """The data set's epoch, written now if missing (None if a full Redis refuses it)."""
        from redis.exceptions import ResponseError

        with contextlib.suppress(ResponseError):  # at maxmemory: read only
            await client.set(self.epoch_key, uuid.uuid4().hex, nx=True)
        epoch: str | None = await client.get(self.epoch_key)
        return epoch

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
        confirming, self._confirming = self._confirming, None
        if confirming is not None:
            confirming.cancel()
            await asyncio.gather(confirming, return_exceptions=True)
        if self._held and self._redis is not None:
            with contextlib.suppress(Exception):
                await self._confirm_held()
        if self._held:
            logger.warning(
                "Redis %s has no persistence: %d events this process appended are not "
                "delivered yet and are lost if redis-server restarts before a worker delivers "
                "them: %s",
                self.description,
                len(self._held),
                ", ".join(sorted(self._held)),
            )
            self._held.clear()
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
        # The server refuses the write past this moment (its clock): redis-py gives up on the
        # answer append_timeout after sending, and the margin covers our reading of its clock.
        deadline = self.now() + self.append_timeout - min(0.5, self.append_timeout / 4)
        try:
            await self._add_rows(rows, deadline)
        except Exception as exc:
            if "LATE" in str(exc):  # a hung server, or its clock stepped: read it again
                with contextlib.suppress(Exception):
                    await self._sync_clock(self.client)
            raise
        self._backlog += len(rows)
        if self._held and time.monotonic() >= self._next_confirm:
            self._confirm_soon()

    async def _add_rows(self, rows: Sequence[OutboxRow], deadline: float) -> None:
        holds = [self._holds(row, 3) for row in rows]
        found = await self._scripts["append"](
            keys=[self.stream, self.epoch_key, *self.order_hashes.values()],
            args=[deadline, uuid.uuid4().hex, len(rows), *(dump_row(r) for r in rows), *holds],
        )
        epoch, ids = str(found[0]), [str(i) for i in found[1:]]
        lost = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        if lost:
            self._data_lost("its epoch key changed")
        if not self.durable:
            for row, entry_id in zip(rows, ids, strict=True):
                self._held[row.event_id] = (replace(row, handle=entry_id), "stream", entry_id)

    def _data_lost(self, how: str) -> None:
        """Redis lost its data set: append again, now, the rows this process still held."""
        # Rows on their way to the provider finish first: appended again only if not delivered.
        self._orphans |= self._claimed & set(self._held)
        rows = [row for eid, (row, _, _) in self._held.items() if eid not in self._orphans]
        for row in rows:
            del self._held[row.event_id]
        others = max(0, self._backlog - len(rows) - len(self._orphans))
        self._backlog = len(rows)
        summary = (
            f"outbox {self.description}: stream lost: Redis lost its data ({how}: restarted "
            f"without persistence, or the keys were deleted); {len(rows)} events this process "
            f"held are appended again, {len(self._orphans)} being attempted are appended again "
            f"unless delivered; events other processes appended may be gone (up to {others})"
        )
        ids = ", ".join(r.event_id for r in rows) or "none"
        attempted = ", ".join(sorted(self._orphans)) or "none"
        logger.error("%s. Appended again: %s. Being attempted: %s", summary, ids, attempted)
        self.problems.append(summary)
        self._loss_reported = True
        if rows:
            asyncio.get_running_loop().create_task(self._restore(rows))

    async def _restore(self, rows: builtins.list[OutboxRow]) -> None:
        for start in range(0, len(rows), 500):
            part = rows[start : start + 500]
            for attempt in range(30):
                try:
                    await self._add_rows(part, self.now() + self.append_timeout)
                    break
                except Exception as exc:  # keep them in memory and try again
                    if attempt == 29:
                        for row in part:
                            self._held[row.event_id] = (row, "stream", "")
                        logger.error(
                            "outbox %s: could not append again %s: %s",
                            self.description,
                            ", ".join(r.event_id for r in part),
                            exc,
                        )
                    await asyncio.sleep(1.0)

    def _confirm_soon(self) -> None:
        self._next_confirm = time.monotonic() + 10.0
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.get_running_loop().create_task(self._confirm_quietly())

    async def _confirm_quietly(self) -> None:
        try:
            await self._confirm_held()
        except Exception as exc:
            logger.info("outbox %s: could not check held rows: %s", self.description, exc)

    async def _confirm_held(self) -> None:
        """Forget held rows that left the stream (or the retry set) by another worker's hand:
        delivered, or claimed by that worker, which answers for them now."""
        held = [(eid, where, ref) for eid, (_, where, ref) in self._held.items() if ref]
        for start in range(0, len(held), 1000):
            part = held[start : start + 1000]
            async with self.client.pipeline(transaction=False) as pipe:
                for _, where, ref in part:
                    if where == "stream":
                        pipe.xrange(self.stream, ref, ref, count=1)
                    else:
                        pipe.zscore(self.retry_key, ref)
                found = await pipe.execute()
            for (event_id, _, ref), there in zip(part, found, strict=True):
                entry = self._held.get(event_id)
                if not there and entry is not None and entry[2] == ref:
                    del self._held[event_id]

    async def claim(self, limit: int, lease: float) -> builtins.list[OutboxRow]:
        """Promote due retries, take over entries idle longer than ``lease``, read new ones."""
        from redis.exceptions import ResponseError

        try:
            return await self._claim(limit, lease)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        if self._epoch is not None and await self.client.get(self.epoch_key) != self._epoch:
            self._epoch = await self._read_epoch(self.client)
            self._data_lost("its consumer group and epoch key are gone")
            await self._ensure_group(self.client)
            self._cursor = "0-0"
        elif await self._ensure_group(self.client) and not self._loss_reported:
            lost = f"up to {self._backlog}" if self._backlog else "an unknown number of"
            message = (
                f"outbox {self.description}: stream lost (its consumer group was gone: Redis "
                f"restarted without its data, or the key was deleted): {lost} events may be "
                "gone; the group was created again and delivery goes on"
            )
            logger.error("%s", message)
            self.problems.append(message)
            self._backlog, self._cursor = 0, "0-0"
        self._loss_reported = False
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
        rows, held = [], []
        loaded = [load_row(entry_id, fields, "inflight") for entry_id, fields in entries]
        waiting = await self._waiting(loaded)
        for row in loaded:
            entry_id = row.handle
            if row.order[0] in waiting:
                held.append(row)
                continue
            times = delivered.get(entry_id, 1)
            first = row.first_attempt_at or (entry_time(entry_id) if times > 1 else now)
            rows.append(
                replace(row, attempts=row.attempts + times, first_attempt_at=first, updated_at=now)
            )
        if not self.durable:  # this process answers for what it claimed
            for row in rows:
                self._held[row.event_id] = (row, "stream", row.handle)
                self._claimed.add(row.event_id)
        for row in held:  # unattempted: back for a moment, its attempts as they were
            later = replace(row, next_attempt_at=now + HOLD)
            await self._finish(row, "retry", self.retry_key, dump_row(later), now + HOLD)
        self._backlog += len(held)  # still to deliver (the finish counted them out)
        return rows

    async def _waiting(self, rows: builtins.list[OutboxRow]) -> set[OrderKey]:
        """The wait keys of ``rows`` with an unfinished holder (a lead, a sale).

        Read after the rows were claimed: every holder appended before them is counted by
        then, and a count goes down only once its holder is delivered or dead, so an event is
        never sent before an earlier holder of its key is answered (a later one may hold it too).
        """
        keys = sorted({row.order[0] for row in rows if row.order[0] is not None})
        if not keys:
            return set()
        async with self.client.pipeline(transaction=False) as pipe:
            for space, key in keys:
                pipe.hget(self.order_hashes[space], key)
            counts = await pipe.execute()
        return {k for k, n in zip(keys, counts, strict=True) if n is not None and int(n) > 0}

    def _holds(self, row: OutboxRow, first: int) -> str:
        """The order key ``row`` holds for a script: the index in its KEYS of the key space's
        hash (the hashes from ``first`` on), then the key; '' for none."""
        holds = row.order[1]
        if holds is None:
            return ""
        return f"{first + list(self.order_hashes).index(holds[0])}{holds[1]}"

    async def _finish(
        self, row: OutboxRow, action: str, target: str, payload: str, arg: float
    ) -> None:
        if row.event_id in self._orphans:
            await self._finish_orphan(row, action)
            return
        # One script, allowed at maxmemory: check this consumer still holds the entry (a
        # worker whose lease was taken over records nothing), move or count it, XACK + XDEL.
        ends = action == "delivered" or target == self.dead_key
        done = await self._scripts["finish"](
            keys=[self.stream, target, self.delivered_key, *self.order_hashes.values()],
            args=[
                self.group,
                self.consumer,
                row.handle,
                action,
                payload,
                arg,
                self._holds(row, 4) if ends else "",
            ],
        )
        if not done:
            logger.info("event %s: claim taken over by another worker; not recorded", row.event_id)
        else:
            self._backlog = max(0, self._backlog - 1)
        if self.durable:
            return
        self._claimed.discard(row.event_id)
        if not done or action == "delivered" or target == self.dead_key:
            self._held.pop(row.event_id, None)  # finished, or another worker's now
        elif action == "retry":
            self._held[row.event_id] = (row, "retry", payload)
        else:  # released onto the stream again as a new entry
            self._held[row.event_id] = (row, "stream", str(done))

    async def _finish_orphan(self, row: OutboxRow, action: str) -> None:
        """Finish a row whose entry went with the lost data set while we attempted it:
        delivered, it is done; otherwise it goes onto the new stream (with its attempts)."""
        if action != "delivered":
            await self._add_rows([row], self.now() + self.append_timeout)
        else:
            self._held.pop(row.event_id, None)
        self._orphans.discard(row.event_id)
        self._claimed.discard(row.event_id)

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
        """Trim delivered rows past ``retention``; remove consumers idle past the lease; forget
        held rows another worker took."""
        client = self.client
        if self._held:
            await self._confirm_held()
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
