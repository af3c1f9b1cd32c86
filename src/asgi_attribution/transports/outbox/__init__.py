"""The durable outbox: events stored before ``track_*`` returns, delivered from the store.

:mod:`.store` holds the row and the store contract, :mod:`.transport` the
:class:`OutboxTransport` that writes and delivers, :mod:`.sqlite` and :mod:`.redis` the stores.
"""

from .redis import RedisOutbox
from .sqlite import SQLiteOutbox
from .store import OutboxRow, OutboxStatus, OutboxStore, open_store
from .transport import OutboxTransport

__all__ = [
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "OutboxTransport",
    "RedisOutbox",
    "SQLiteOutbox",
    "open_store",
]
