"""Test helpers: capture every tracked event instead of delivering it, and a local provider.

In a test of your app, wrap the requests in :func:`capture_events` (or use the pytest fixture
``attribution_events``, registered automatically): any :class:`Tracker` in the process records
its events there, so the app's code is untouched and no HTTP is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .events import CustomerEvent, Event, LeadEvent, SaleEvent
from .fake_provider import FakeProvider, Faults, Received, serve_in_thread
from .transports.memory import MemoryTransport, active_captures

__all__ = [
    "CapturedEvents",
    "FakeProvider",
    "Faults",
    "MemoryTransport",
    "Received",
    "capture_events",
    "serve_in_thread",
]


class CapturedEvents(MemoryTransport):
    """The events captured by :func:`capture_events`; indexable and iterable like a list.

    Example:
        >>> with capture_events() as events:
        ...     pass  # drive your app here
        >>> len(events), events.leads
        (0, [])
    """

    def __len__(self) -> int:
        return len(self.deliveries)

    def __getitem__(self, index: int) -> Event:
        return self.deliveries[index].event

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    @property
    def leads(self) -> list[LeadEvent]:
        """The captured lead events."""
        return [e for e in self.events if isinstance(e, LeadEvent)]

    @property
    def sales(self) -> list[SaleEvent]:
        """The captured sale events."""
        return [e for e in self.events if isinstance(e, SaleEvent)]

    @property
    def customers(self) -> list[CustomerEvent]:
        """The captured customer updates."""
        return [e for e in self.events if isinstance(e, CustomerEvent)]


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Record every event any Tracker in the process sends, in place of delivering it.

    Captures nest; the innermost one receives the events.

    Example:
        >>> with capture_events() as events:
        ...     ...  # e.g. POST /signup through httpx.ASGITransport
        Ellipsis
        >>> [e.event_name for e in events.leads]
        []
    """
    captured = CapturedEvents()
    active_captures.append(captured)
    try:
        yield captured
    finally:
        active_captures.remove(captured)
