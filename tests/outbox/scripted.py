"""An inner transport for the outbox tests that counts every attempt per event.

No mocks of HTTP: the outbox's own contract is one ``attempt`` per claim, and this transport
answers it as a provider would (2xx, a retryable 503, a 401 of the whole integration), so the
tests can count sent, delivered and lost exactly.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from asgi_attribution import DeliveryError
from asgi_attribution.transports import Delivery, TrackResult, Transport
from asgi_attribution.transports._base import RetryPolicy

__all__ = ["FAST", "Integration", "Scripted"]

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, max_retry_after=2, max_elapsed=30)


class Integration(DeliveryError):
    """A 401 of the whole integration (``integration=True``), as the HTTP transport raises."""

    integration = True

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id, "unauthorized", "invalid API key", status_code=401)


class Scripted(Transport):
    """Attempts answered 2xx, except: the first ``fail_first`` of each event (503, retryable);
    all while ``unauthorized`` is set (401 integration); each waits for ``gate`` if given."""

    def __init__(self, *, fail_first: int = 0, retry: RetryPolicy = FAST) -> None:
        self.retry = retry
        self.timeout = 2.0
        self.fail_first = fail_first
        self.unauthorized = False
        self.final_code: str | None = None
        self.gate: asyncio.Event | None = None
        self.attempts: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()

    async def attempt(self, delivery: Delivery) -> TrackResult:
        event_id = delivery.event.event_id
        self.attempts[event_id] += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.unauthorized:
            raise Integration(event_id)
        if self.final_code is not None:
            raise DeliveryError(event_id, self.final_code, "refused", status_code=404)
        if self.attempts[event_id] <= self.fail_first:
            raise DeliveryError(event_id, "http_503", "unavailable", retryable=True)
        self.sent[event_id] += 1
        return TrackResult("sent", delivery.event, status_code=200)
