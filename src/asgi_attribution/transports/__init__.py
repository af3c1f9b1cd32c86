"""Transports: how events leave the process (memory, HTTP, background queue, outbox)."""

from .base import Delivery, TrackResult, Transport
from .http import HTTPTransport, RetryPolicy
from .memory import MemoryTransport

__all__ = [
    "Delivery",
    "HTTPTransport",
    "MemoryTransport",
    "RetryPolicy",
    "TrackResult",
    "Transport",
]
