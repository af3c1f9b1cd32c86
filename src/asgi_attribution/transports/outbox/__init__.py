"""The durable outbox: events stored before ``track_*`` returns, delivered from the store.

:class:`OutboxTransport` writes each event to a store and delivers from it; the stores are
:class:`SQLiteOutbox` (one file, one machine), :class:`RedisOutbox` (Redis Streams, many hosts)
and :class:`PostgresOutbox` (a table next to your data; :func:`append_within` commits an event
with your own rows). :class:`OutboxStore` is the contract a store implements, and
:func:`open_store` picks a store from an option value (a path or a URL).
"""

from __future__ import annotations

from ._postgres import PostgresOutbox
from ._redis import RedisOutbox
from ._sqlite import SQLiteOutbox
from ._store import OutboxRow, OutboxStatus, OutboxStore, append_within, open_store
from ._transport import OutboxTransport

__all__ = [
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "OutboxTransport",
    "PostgresOutbox",
    "RedisOutbox",
    "SQLiteOutbox",
    "append_within",
    "open_store",
]
