"""Replace every tracker's delivery for a while (tests): the named hook behind ``capture_events``.

Like FastAPI's ``app.dependency_overrides``: the app's code is untouched, and while an override
is active every :class:`~asgi_attribution.Tracker` in the process hands its events to it instead
of its own transport. A plain list, not a ContextVar: a capture must see events tracked from
any task or thread of the process, like Django's ``mail.outbox``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from .events import LeadEvent
from .transports import BackgroundTransport, OutboxTransport, TrackResult, Transport

__all__ = ["TransportOverrides", "as_configured", "transport_overrides"]


class TransportOverrides:
    """A stack of transports that stand in for every tracker's own; the innermost wins.

    Example:
        >>> from asgi_attribution import MemoryTransport
        >>> memory = MemoryTransport()
        >>> with transport_overrides.use(memory):
        ...     transport_overrides.current is memory
        True
        >>> transport_overrides.current is None
        True
    """

    __slots__ = ("_stack",)

    def __init__(self) -> None:
        self._stack: list[Transport] = []

    @property
    def current(self) -> Transport | None:
        """The transport every tracker uses now, or ``None`` (each uses its own)."""
        return self._stack[-1] if self._stack else None

    @contextmanager
    def use(self, transport: Transport) -> Iterator[Transport]:
        """Route every tracker's events to ``transport`` inside the ``with`` block."""
        self._stack.append(transport)
        try:
            yield transport
        finally:
            self._stack.remove(transport)


#: The process-wide overrides that :class:`~asgi_attribution.Tracker` consults on each event.
transport_overrides = TransportOverrides()


def as_configured(result: TrackResult, transport: Transport, *, started: bool) -> TrackResult:
    """An override's ``result`` as a tracker with ``transport`` would have returned it.

    So code that branches on the result takes the same branch in tests as in production:
    ``queued`` (and ``durable`` with an outbox) where the tracker queues, ``sent`` inline.

    Example:
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> queue = BackgroundTransport(MemoryTransport())
        >>> as_configured(TrackResult("sent", lead), queue, started=True).status
        'queued'
    """
    if result.status != "sent" or result.event is None:
        return result
    if isinstance(transport, OutboxTransport):
        return replace(result, status="queued", durable=True, status_code=None, response=None)
    event = result.event
    inline = isinstance(event, LeadEvent) and event.mode == "wait"
    if isinstance(transport, BackgroundTransport) and started and not inline:
        return replace(result, status="queued", status_code=None, response=None)
    return result
