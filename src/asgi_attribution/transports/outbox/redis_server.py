"""What the Redis outbox needs from the server, checked at open, and its Lua scripts.

- ``maxmemory-policy``: an ``allkeys-*`` policy evicts the outbox's keys when memory is full
  and loses events silently: refused unless ``allow_eviction=True``. (``volatile-*`` policies
  evict only keys with a TTL; the outbox sets none.)
- Persistence: without the append-only file (``appendonly yes``) a restart of redis-server
  loses what it held (RDB snapshots keep only what was saved): appends return
  ``durable=False`` and a WARNING says so.
- Scripts are flagged ``allow-oom`` (Redis 7+), so that a Redis at ``maxmemory`` with
  ``noeviction`` still acknowledges and moves entries: a full Redis drains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..._exceptions import OutboxError

__all__ = ["FINISH", "PROMOTE", "ServerFacts", "check_server", "script"]

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

# Finish the entry ARGV[3] of the stream KEYS[1] if the consumer ARGV[2] of group ARGV[1] still
# holds it (checked atomically: a worker whose lease was taken over records nothing). ARGV[4]:
# delivered (count in KEYS[3], keep ARGV[5] in the stream KEYS[2], capped at ARGV[6]), retry
# (ZADD ARGV[5] to KEYS[2] scored ARGV[6]), move (XADD ARGV[5] to the stream KEYS[2]).
FINISH = """
local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #owned == 0 then return 0 end
if ARGV[4] == 'delivered' then
  redis.call('INCR', KEYS[3])
  if tonumber(ARGV[6]) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'row', ARGV[5])
  end
elseif ARGV[4] == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
else
  redis.call('XADD', KEYS[2], '*', 'row', ARGV[5])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
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
