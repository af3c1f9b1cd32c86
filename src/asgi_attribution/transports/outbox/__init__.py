"""The durable outbox: events stored before ``track_*`` returns, delivered from the store.

:mod:`.store` holds the row and the store contract, :mod:`.transport` the
:class:`OutboxTransport` that writes and delivers, :mod:`.sqlite`, :mod:`.redis` and
:mod:`.postgres` the stores.
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
