"""Transports: how events leave the process (memory, HTTP, background queue, outbox)."""

from .background import BackgroundTransport, QueueFullError
from .base import Delivery, DeliveryStats, TrackResult, Transport
from .http import HTTPTransport, RetryPolicy
from .memory import MemoryTransport

__all__ = [
    "BackgroundTransport",
    "Delivery",
    "DeliveryStats",
    "HTTPTransport",
    "MemoryTransport",
    "QueueFullError",
    "RetryPolicy",
    "TrackResult",
    "Transport",
]
