"""The transport interface: how a validated event leaves the process.

Kept as small as httpx's transport: ``send`` one delivery, ``aclose`` at the end. ``start`` and
``flush`` exist for transports that hold a queue; the defaults do nothing.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

from ..events import Event
from ..providers import Provider, ProviderRequest

__all__ = ["Delivery", "DeliveryStats", "TrackResult", "Transport"]


# eq=False: deliveries are compared and hashed by identity (the event holds dicts).
@dataclass(frozen=True, slots=True, eq=False)
class Delivery:
    """One event on its way to one provider (no credentials: those belong to the transport).

    Example:
        >>> from asgi_attribution import DUB, LeadEvent
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> d = Delivery(lead, DUB)
        >>> d.request().json["customerExternalId"]
        'u'
    """

    event: Event
    provider: Provider

    def request(self) -> ProviderRequest:
        """The provider's HTTP request for this event (path, method, JSON body)."""
        return self.provider.render(self.event)


@dataclass(frozen=True, slots=True)
class TrackResult:
    """What happened to a tracking call: ``queued``, ``sent`` or ``skipped`` (with a reason).

    ``response`` is the provider's JSON answer when the event was sent inline. ``durable`` is
    True when a queued event was written to a durable outbox before this call returned.

    Example:
        >>> TrackResult("skipped", reason="no click id").skipped
        True
    """

    status: Literal["queued", "sent", "skipped"]
    event: Event | None = None
    reason: str | None = None
    status_code: int | None = None
    response: Any = None
    durable: bool = False

    @property
    def accepted(self) -> bool:
        """True once the event cannot be lost: the provider took it, or a durable outbox holds it.

        An event in the in-memory background queue is not yet accepted.
        """
        return self.status == "sent" or (self.status == "queued" and self.durable)

    @property
    def skipped(self) -> bool:
        """True when nothing was sent or queued (for example an organic signup)."""
        return self.status == "skipped"

    @property
    def event_id(self) -> str | None:
        """The event's unique id (also its ``Idempotency-Key``), if an event was built."""
        return self.event.event_id if self.event is not None else None


@dataclass
class DeliveryStats:
    """Counters a user can read or export: ``tracker.stats``.

    ``queued``: accepted into the background queue; ``sent``: the provider answered 2xx;
    ``retried``: attempts after the first; ``failed``: final failures; ``dropped``: given up
    without a delivery attempt finishing (queue full, shutdown timeout).

    Example:
        >>> stats = DeliveryStats()
        >>> stats.sent += 1
        >>> stats.as_dict()["sent"]
        1
    """

    queued: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for metrics or logs)."""
        return {
            "queued": self.queued,
            "sent": self.sent,
            "retried": self.retried,
            "failed": self.failed,
            "dropped": self.dropped,
        }


class Transport(abc.ABC):
    """Delivers events. Subclass it and implement :meth:`send`.

    Example:
        >>> class PrintTransport(Transport):
        ...     async def send(self, delivery):
        ...         print(delivery.request().json)
        ...         return TrackResult("sent", delivery.event)
    """

    #: True for transports that count sent/failed in their own ``stats`` (the tracker counts
    #: for the others).
    counts_outcomes = False

    @abc.abstractmethod
    async def send(self, delivery: Delivery) -> TrackResult:
        """Deliver (or enqueue) one event; raise :class:`DeliveryError` on a final failure."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare to deliver (called at lifespan startup or first use); idempotent."""

    async def flush(self, timeout: float | None = None) -> None:  # noqa: B027 - optional hook
        """Wait until everything accepted so far has been delivered or reported."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Deliver what is pending within the transport's limits, then release resources."""
