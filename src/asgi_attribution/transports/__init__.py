"""Transports: how events leave the process (memory, HTTP, background queue, outbox).

A transport makes one attempt per call of :meth:`Transport.attempt`; :mod:`.retry` holds the
one retry step that :meth:`Transport.send`, :class:`BackgroundTransport` and
:class:`OutboxTransport` use to schedule the next one.
"""

from .._exceptions import IntegrationError, OutboxError, QueueFullError
from .background import BackgroundTransport
from .base import Delivery, DeliveryStats, TrackResult, Transport
from .http import HTTPTransport
from .memory import MemoryTransport
from .observe import DeliveryRecord
from .outbox import OutboxRow, OutboxStatus, OutboxStore, OutboxTransport, RedisOutbox, SQLiteOutbox
from .outbox.postgres import PostgresOutbox
from .retry import RetryPolicy

__all__ = [
    "BackgroundTransport",
    "Delivery",
    "DeliveryRecord",
    "DeliveryStats",
    "HTTPTransport",
    "IntegrationError",
    "MemoryTransport",
    "OutboxError",
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "OutboxTransport",
    "PostgresOutbox",
    "QueueFullError",
    "RedisOutbox",
    "RetryPolicy",
    "SQLiteOutbox",
    "TrackResult",
    "Transport",
]
