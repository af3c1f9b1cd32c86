"""The observer hook of :class:`DeliveryStats`: one small record per thing that happened.

Metrics exporters (OpenTelemetry, Prometheus, a log line) subscribe a callable with
``stats.subscribe(callback)``; it is called synchronously, in the thread that did the work, with
a :class:`DeliveryRecord`. Nothing is built when nobody subscribes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["DeliveryObserver", "DeliveryRecord", "Observers", "RecordKind"]

logger = logging.getLogger("asgi_attribution")

RecordKind = Literal[
    "queued",
    "sent",
    "retried",
    "failed",
    "dropped",
    "duplicate",
    "not_recorded",
    "paused",
    "resumed",
    "attempt",
]


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """What an observer receives: one thing that happened to one event (or to delivery).

    ``kind`` is one of :data:`RecordKind`. ``event_id``, ``provider`` (``"dub"``, ``"pimms"``) and
    ``event_kind`` (``"lead"``, ``"sale"``, ``"customer"``) name the event, when there is one
    (``paused``/``resumed`` concern the whole transport). An ``attempt`` record carries its
    ``duration`` in seconds and the HTTP ``status_code`` (None for a network error); ``reason``
    is the error code, outcome reason or cause, when known.

    Example:
        >>> DeliveryRecord("attempt", "evt_1", "dub", "lead", duration=0.02, status_code=200).kind
        'attempt'
    """

    kind: RecordKind
    event_id: str | None = None
    provider: str | None = None
    event_kind: str | None = None
    duration: float | None = None
    status_code: int | None = None
    reason: str | None = None


DeliveryObserver = Callable[[DeliveryRecord], object]


class Observers:
    """The subscribed callbacks; :meth:`emit` is a no-op (no record built) when there are none.

    A failing observer is logged and never stops delivery.

    Example:
        >>> seen = []
        >>> observers = Observers()
        >>> observers.add(seen.append)
        >>> observers.emit("sent", event_id="evt_1", provider="dub", event_kind="lead")
        >>> [record.kind for record in seen]
        ['sent']
    """

    __slots__ = ("_callbacks", "any")

    def __init__(self) -> None:
        self._callbacks: tuple[DeliveryObserver, ...] = ()
        #: True while a callback is subscribed: an attribute, read for every event without a
        #: call (``bool(observers)`` says the same).
        self.any = False

    def __bool__(self) -> bool:
        return self.any

    def add(self, callback: DeliveryObserver) -> None:
        """Subscribe ``callback`` (a tuple swap: safe against a concurrent :meth:`emit`)."""
        self._callbacks = (*self._callbacks, callback)
        self.any = True

    def remove(self, callback: DeliveryObserver) -> None:
        """Unsubscribe ``callback``; a callback not subscribed is ignored."""
        self._callbacks = tuple(c for c in self._callbacks if c != callback)
        self.any = bool(self._callbacks)

    def emit(
        self,
        kind: RecordKind,
        *,
        event_id: str | None = None,
        provider: str | None = None,
        event_kind: str | None = None,
        duration: float | None = None,
        status_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Build one record and hand it to every observer (nothing at all if there is none)."""
        callbacks = self._callbacks
        if not callbacks:
            return
        record = DeliveryRecord(
            kind,
            event_id,
            provider,
            event_kind,
            duration=duration,
            status_code=status_code,
            reason=reason,
        )
        for callback in callbacks:
            try:
                callback(record)
            except Exception:  # an exporter's bug must not stop delivery
                logger.exception("delivery observer %r failed", callback)
