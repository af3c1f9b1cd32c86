"""In-memory delivery for tests and demos, and the process-wide capture used by
:func:`asgi_attribution.testing.capture_events`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..events import Event
from ..providers import ProviderRequest
from .base import Delivery, TrackResult, Transport

__all__ = ["MemoryTransport"]


class MemoryTransport(Transport):
    """Records every event instead of sending it; optionally answers through ``handler``.

    ``handler`` (like httpx's ``MockTransport``) receives each :class:`Delivery` and returns the
    provider's answer, or raises :class:`DeliveryError` to simulate a refusal.

    Example:
        >>> transport = MemoryTransport()
        >>> tracker = Tracker("dub", transport=transport)  # doctest: +SKIP
        >>> transport.events  # every event tracked, in order
        []
    """

    def __init__(self, handler: Callable[[Delivery], Any] | None = None) -> None:
        self.handler = handler
        self.deliveries: list[Delivery] = []

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

    async def send(self, delivery: Delivery) -> TrackResult:
        """Render (to catch dialect errors as a real transport would), then record."""
        delivery.request()
        response = self.handler(delivery) if self.handler is not None else None
        self.deliveries.append(delivery)
        return TrackResult("sent", delivery.event, status_code=200, response=response)


# Active captures, innermost last. A plain list, not a ContextVar: a capture must see events
# tracked from any task or thread of the process, like Django's mail.outbox.
active_captures: list[MemoryTransport] = []
