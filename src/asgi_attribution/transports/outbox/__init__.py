"""The durable outbox: events stored before ``track_*`` returns, delivered from the store.

:mod:`.store` holds the row and the store contract, :mod:`.transport` the
:class:`OutboxTransport` that writes and delivers, :mod:`.sqlite`, :mod:`.redis` and
:mod:`.postgres` the stores.
"""

from .postgres import PostgresOutbox
from .redis import RedisOutbox
from .sqlite import SQLiteOutbox
from .store import OutboxRow, OutboxStatus, OutboxStore, open_store
from .transport import OutboxTransport

__all__ = [
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "OutboxTransport",
    "PostgresOutbox",
    "RedisOutbox",
    "SQLiteOutbox",
    "open_store",
]
