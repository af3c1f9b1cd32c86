"""Transports: how events leave the process (memory, HTTP, background queue, outbox).

A transport makes one attempt per call of :meth:`Transport.attempt`; :mod:`.retry` holds the
one retry step that :meth:`Transport.send`, :class:`BackgroundTransport` and
:class:`OutboxTransport` use to schedule the next one.
"""

from __future__ import annotations

from .._exceptions import IntegrationError, OutboxError, QueueFullError
from ._background import BackgroundTransport
from ._base import Delivery, DeliveryRecord, DeliveryStats, RetryPolicy, TrackResult, Transport
from ._http import HTTPTransport
from ._memory import MemoryTransport
from .outbox import OutboxRow, OutboxStatus, OutboxStore, OutboxTransport, RedisOutbox, SQLiteOutbox
from .outbox._postgres import PostgresOutbox

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
