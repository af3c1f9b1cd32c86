"""Transports: how events leave the process (memory, HTTP, background queue, outbox).

A transport makes one attempt per call of :meth:`Transport.attempt`, as an httpx transport
makes one request; :meth:`Transport.send`, :class:`BackgroundTransport` and
:class:`OutboxTransport` are layers that schedule attempts with the one retry step of
:class:`RetryPolicy`. Implement :class:`Transport` for a custom delivery; tests swap the
transport (:class:`MemoryTransport`), never patch HTTP. Every name here is also exported by
:mod:`asgi_attribution`.
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
