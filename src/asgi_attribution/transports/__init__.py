"""Transports: how events leave the process (memory, HTTP, background queue, outbox)."""

from .background import BackgroundTransport, QueueFullError
from .base import Delivery, DeliveryStats, TrackResult, Transport
from .http import HTTPTransport, RetryPolicy
from .memory import MemoryTransport
from .outbox import OutboxError, OutboxRow, OutboxStatus, OutboxStore, OutboxTransport
from .outbox_redis import RedisOutbox
from .outbox_sqlite import SQLiteOutbox

__all__ = [
    "BackgroundTransport",
    "Delivery",
    "DeliveryStats",
    "HTTPTransport",
    "MemoryTransport",
    "OutboxError",
    "OutboxRow",
    "OutboxStatus",
    "OutboxStore",
    "OutboxTransport",
    "QueueFullError",
    "RedisOutbox",
    "RetryPolicy",
    "SQLiteOutbox",
    "TrackResult",
    "Transport",
]
