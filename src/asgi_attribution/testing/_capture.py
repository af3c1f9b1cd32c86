"""Capture every tracked event instead of delivering it.

Built on the tracker's transport override hook: while a capture is open, every
:class:`~asgi_attribution.Tracker` in the process hands its events to it, so the app's code is
untouched and no HTTP is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._events import CustomerEvent, Event, LeadEvent, SaleEvent
from .._tracker import transport_overrides
from ..transports._memory import MemoryTransport

__all__ = ["CapturedEvents", "capture_events"]


class CapturedEvents(MemoryTransport):
    """The events captured by :func:`capture_events`; indexable and iterable like a list.

    Example:
        >>> from asgi_attribution.testing import CapturedEvents
        >>> with capture_events() as events:
        ...     pass  # drive your app here
        >>> isinstance(events, CapturedEvents), len(events), events.leads
        (True, 0, [])
    """

    def __len__(self) -> int:
        return len(self.deliveries)

    def __getitem__(self, index: int) -> Event:
        return self.deliveries[index].event

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    @property
    def leads(self) -> list[LeadEvent]:
        """The captured lead events.

        Example:
            >>> CapturedEvents().leads
            []
        """
        return [e for e in self.events if isinstance(e, LeadEvent)]

    @property
    def sales(self) -> list[SaleEvent]:
        """The captured sale events.

        Example:
            >>> CapturedEvents().sales
            []
        """
        return [e for e in self.events if isinstance(e, SaleEvent)]

    @property
    def customers(self) -> list[CustomerEvent]:
        """The captured customer updates.

        Example:
            >>> CapturedEvents().customers
            []
        """
        return [e for e in self.events if isinstance(e, CustomerEvent)]


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Record every event any Tracker in the process sends, in place of delivering it.

    Captures nest; the innermost one receives the events.

    Example:
        >>> from asgi_attribution._tracker import transport_overrides
        >>> with capture_events() as events:
        ...     transport_overrides.current is events  # e.g. POST /signup via ASGITransport
        True
        >>> [e.event_name for e in events.leads]
        []
    """
    captured = CapturedEvents()
    with transport_overrides.use(captured):
        yield captured
