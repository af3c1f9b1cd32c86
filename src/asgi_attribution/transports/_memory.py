"""In-memory delivery for tests and demos: every event recorded, nothing sent."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .._events import Event
from .._providers import ProviderRequest
from ._base import Delivery, DeliveryStats, RetryPolicy, TrackResult, Transport

__all__ = ["MemoryTransport"]


class MemoryTransport(Transport):
    """Records every event instead of sending it; optionally answers through ``handler``.

    ``handler`` (like httpx's ``MockTransport``) receives each :class:`Delivery` and returns the
    provider's answer (or an awaitable of it), or raises :class:`DeliveryError` to simulate a
    refusal; a refused attempt is not recorded. ``retry`` is the policy the layers use to retry
    a retryable refusal.

    Example:
        >>> import asyncio
        >>> transport = MemoryTransport(handler=lambda delivery: {"ok": True})
        >>> tracker = Tracker("dub", transport=transport)
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> asyncio.run(tracker.send(lead)).response
        {'ok': True}
        >>> [event.event_name for event in transport.events]
        ['Sign up']
    """

    def __init__(
        self,
        handler: Callable[[Delivery], Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
        stats: DeliveryStats | None = None,
    ) -> None:
        self.handler = handler
        self.deliveries: list[Delivery] = []
        if retry is not None:
            self.retry = retry
        if stats is not None:
            self.stats = stats

    @property
    def events(self) -> list[Event]:
        """The events recorded so far, in order."""
        return [d.event for d in self.deliveries]

    @property
    def requests(self) -> list[ProviderRequest]:
        """The exact provider requests (path and JSON) the recorded events would make."""
        return [d.request() for d in self.deliveries]

    def clear(self) -> None:
        """Forget everything recorded."""
        self.deliveries.clear()

    async def attempt(self, delivery: Delivery) -> TrackResult:
        """Render (to catch dialect errors as a real transport would), answer, record."""
        delivery.request()
        response = self.handler(delivery) if self.handler is not None else None
        if inspect.isawaitable(response):
            response = await response
        self.deliveries.append(delivery)
        return TrackResult("sent", delivery.event, status_code=200, response=response)
