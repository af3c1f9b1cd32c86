"""The transport contract: how a validated event leaves the process.

As small as httpx's transport: :meth:`Transport.attempt` makes exactly one try at one delivery,
and :meth:`Transport.aclose` releases what the transport holds. Retrying is not the
transport's business: :meth:`Transport.send` (inline) and the background and outbox layers
schedule attempts with the transport's own ``retry`` policy, through the one retry step of
:mod:`.retry`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .._exceptions import DeliveryError
from .._frozen import dict_init
from ..events import Event
from ..providers import Outcome, Provider, ProviderRequest
from .observe import DeliveryObserver, DeliveryRecord, Observers, RecordKind
from .retry import RetryPolicy, next_retry

__all__ = [
    "COUNTERS",
    "ONE_ATTEMPT",
    "Delivery",
    "DeliveryRecord",
    "DeliveryStats",
    "TrackResult",
    "Transport",
]


# eq=False: deliveries are compared and hashed by identity (the event holds dicts). Without
# slots, for dict_init: one per event (bench/README.md).
@dict_init
@dataclass(frozen=True, eq=False)
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

    @property
    def rendered(self) -> ProviderRequest | None:
        """The request made by the first :meth:`request` (None before): each event is rendered
        once, not again per attempt."""
        return self.__dict__.get("_rendered")

    def request(self) -> ProviderRequest:
        """The provider's HTTP request for this event (path, method, JSON body)."""
        # Kept beside the fields, not as one: dataclasses.replace (another event, another
        # provider) makes a delivery that renders its own request instead of the old one's.
        rendered: ProviderRequest | None = self.__dict__.get("_rendered")
        if rendered is None:
            rendered = self.provider.render(self.event)
            self.__dict__["_rendered"] = rendered  # frozen fields; this is a cache
        return rendered


# Without slots, for dict_init: two results per event (bench/README.md).
@dict_init
@dataclass(frozen=True)
class TrackResult:
    """What happened to a tracking call: ``queued``, ``sent``, ``skipped`` or ``dropped``.

    ``skipped`` means there was nothing to send (an organic visit); ``dropped`` means there was
    an event but the queue could not take it (full), reported through ``on_drop``. ``reason``
    says why. ``response`` is the provider's JSON answer when the event was sent inline.
    ``durable`` is True when a queued event was written to a durable outbox before this call
    returned.

    ``outcome`` is what the provider's answer says it did with the event (``"recorded"``,
    ``"duplicate"``, ``"not_recorded"``, ``"deferred"`` or ``"unknown"``; None until a response
    body was seen), ``outcome_reason`` why (``"duplicate_lead"``, ``"amount_zero"``,
    ``"not_json"``...). ``warnings`` lists what the tracker changed or noticed (for example an
    optional field dropped for breaking a limit).

    Example:
        >>> TrackResult("skipped", reason="no click id").skipped
        True
        >>> dropped = TrackResult("dropped", reason="queue full")
        >>> dropped.skipped, dropped.dropped, dropped.accepted
        (False, True, False)
        >>> TrackResult("sent", outcome="duplicate", outcome_reason="duplicate_lead").recorded
        False
    """

    status: Literal["queued", "sent", "skipped", "dropped"]
    event: Event | None = None
    reason: str | None = None
    status_code: int | None = None
    response: Any = None
    durable: bool = False
    outcome: Outcome | None = None
    outcome_reason: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        """True once the event cannot be lost: the provider took it, or a durable outbox holds it.

        An event in the in-memory background queue is not yet accepted.
        """
        return self.status == "sent" or (self.status == "queued" and self.durable)

    @property
    def skipped(self) -> bool:
        """True when there was nothing to send (for example an organic signup)."""
        return self.status == "skipped"

    @property
    def dropped(self) -> bool:
        """True when the event could not be queued (queue full) and was reported as dropped."""
        return self.status == "dropped"

    @property
    def recorded(self) -> bool:
        """True when the provider's answer says it recorded the event."""
        return self.outcome == "recorded"

    @property
    def event_id(self) -> str | None:
        """The event's unique id (also its ``Idempotency-Key``), if an event was built."""
        return self.event.event_id if self.event is not None else None


#: The counter each observer record kind moves (the others move none).
COUNTERS: dict[str, str] = {
    "queued": "queued",
    "sent": "sent",
    "retried": "retried",
    "failed": "failed",
    "dropped": "dropped",
    "duplicate": "duplicates",
    "not_recorded": "not_recorded",
}


@dataclass
class DeliveryStats:
    """Counters a user can read or export: ``tracker.stats``; and an observer hook.

    ``queued``: accepted into the background queue or the outbox; ``sent``: the provider
    answered 2xx; ``retried``: attempts after the first; ``failed``: final failures;
    ``dropped``: given up without a delivery attempt finishing (queue full, shutdown timeout).
    An event once queued is counted once more at its end, as sent, failed or dropped.
    Of the sent: ``duplicates`` (the provider had it already) and ``not_recorded`` (answered
    2xx, recorded nothing: a sale without a known customer, an amount of zero).

    :meth:`subscribe` a callback to get a :class:`DeliveryRecord` for each of: ``queued``,
    ``sent``, ``retried``, ``failed``, ``dropped``, ``duplicate``, ``not_recorded``, ``paused``,
    ``resumed``, and an ``attempt`` record (``duration`` in seconds, HTTP ``status_code``) per
    attempt. The layers call :meth:`count`; with no subscriber it only moves the counter.

    Example:
        >>> stats = DeliveryStats()
        >>> stats.sent += 1
        >>> stats.as_dict()["sent"]
        1
        >>> seen = []
        >>> stats.subscribe(seen.append)
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> stats.count("attempt", Delivery(lead, DUB), duration=0.01, status_code=200)
        >>> stats.count("sent", Delivery(lead, DUB))
        >>> [(r.kind, r.provider, r.event_kind, r.status_code) for r in seen]
        [('attempt', 'dub', 'lead', 200), ('sent', 'dub', 'lead', None)]
        >>> stats.unsubscribe(seen.append)
        >>> stats.count("sent"); len(seen), stats.sent
        (2, 3)
    """

    queued: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0
    duplicates: int = 0
    not_recorded: int = 0
    observers: Observers = field(default_factory=Observers, repr=False, compare=False)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for metrics or logs)."""
        return {
            "queued": self.queued,
            "sent": self.sent,
            "retried": self.retried,
            "failed": self.failed,
            "dropped": self.dropped,
            "duplicates": self.duplicates,
            "not_recorded": self.not_recorded,
        }

    def subscribe(self, callback: DeliveryObserver) -> None:
        """Call ``callback(record)`` synchronously for everything counted from now on."""
        self.observers.add(callback)

    def unsubscribe(self, callback: DeliveryObserver) -> None:
        """Stop calling ``callback`` (ignored if it was not subscribed)."""
        self.observers.remove(callback)

    def count(
        self,
        kind: RecordKind,
        delivery: Delivery | None = None,
        *,
        duration: float | None = None,
        status_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Move the counter of ``kind`` (if it has one) and tell the observers."""
        counter = COUNTERS.get(kind)
        if counter is not None:
            setattr(self, counter, getattr(self, counter) + 1)
        if not self.observers.any:
            return
        event = delivery.event if delivery is not None else None
        self.observers.emit(
            kind,
            event_id=event.event_id if event is not None else None,
            provider=delivery.provider.name if delivery is not None else None,
            event_kind=event.kind if event is not None else None,
            duration=duration,
            status_code=status_code,
            reason=reason,
        )

    def delivered(self, delivery: Delivery, result: TrackResult) -> None:
        """Count a delivery the provider answered 2xx: ``sent``, and what it says it did.

        Example:
            >>> stats = DeliveryStats()
            >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
            >>> stats.delivered(Delivery(lead, DUB), TrackResult("sent", outcome="duplicate"))
            >>> stats.sent, stats.duplicates, stats.not_recorded
            (1, 1, 0)
        """
        self.count("sent", delivery)
        if result.outcome in ("duplicate", "not_recorded"):
            self.count(result.outcome, delivery, reason=result.outcome_reason)


#: The retry policy of a class that implements only the old ``send``: it retries on its own,
#: so its ``send`` counts as one attempt and the layers never repeat it.
ONE_ATTEMPT = RetryPolicy(max_attempts=1)


class Transport:
    """Delivers events. Subclass it and implement :meth:`attempt`: one try, no retries.

    ``attempt`` returns a :class:`TrackResult` or raises :class:`DeliveryError` (with
    ``retryable`` and ``retry_after``). The transport's ``retry`` policy and ``timeout`` (the
    bound of one attempt) are read by whatever schedules its attempts: :meth:`send` inline,
    :class:`BackgroundTransport` and :class:`OutboxTransport` in the background.

    A subclass written for the old contract, implementing only :meth:`send`, still works: its
    ``send`` is taken as one attempt, never repeated by the layers (``retry`` allows one).

    Example:
        >>> import asyncio
        >>> class PrintTransport(Transport):
        ...     async def attempt(self, delivery):
        ...         print(delivery.request().json["eventName"])
        ...         return TrackResult("sent", delivery.event)
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> asyncio.run(PrintTransport().send(Delivery(lead, DUB))).status
        Sign up
        'sent'
    """

    #: True for transports that count sent/failed in their own ``stats`` (the tracker counts
    #: for the others).
    counts_outcomes: ClassVar[bool] = False
    #: When :meth:`send` and the background layers try a failed attempt again.
    retry: RetryPolicy = RetryPolicy()
    #: Seconds one attempt may take (the outbox's shutdown grace for attempts on the wire).
    timeout: float = 10.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        legacy = cls.attempt is Transport.attempt and cls.send is not Transport.send
        if legacy and "retry" not in cls.__dict__:
            cls.retry = ONE_ATTEMPT

    _stats: DeliveryStats | None = None

    @property
    def stats(self) -> DeliveryStats:
        """This transport's counters: ``retried``, and the outcomes if it ``counts_outcomes``.

        Created on first use unless a transport is given one (shared with the tracker's).
        """
        if self._stats is None:
            self._stats = DeliveryStats()
        return self._stats

    @stats.setter
    def stats(self, stats: DeliveryStats) -> None:
        self._stats = stats

    async def attempt(self, delivery: Delivery) -> TrackResult:
        """Make exactly one try; raise :class:`DeliveryError` (``retryable``, ``retry_after``).

        Subclasses implement this. (For a class of the old contract, it is its ``send``.)
        """
        if type(self).send is Transport.send:
            raise TypeError(f"{type(self).__name__} must implement attempt()")
        return await self.send(delivery)

    async def send(self, delivery: Delivery) -> TrackResult:
        """Deliver one event inline: attempts, retried within ``retry``, then the answer.

        Raises the last :class:`DeliveryError` when the error is final or the budget is spent;
        a fault of the whole integration (``integration=True``: 401, 403, a wrong path, a
        redirect) is final, so it raises at once.
        The background and outbox layers override this to queue or store the event instead.
        """
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self.attempt(delivery)
            except DeliveryError as error:
                wait = next_retry(
                    error,
                    self.retry,
                    attempts=attempts,
                    elapsed=time.monotonic() - started,
                    stats=self.stats,
                    provider=delivery.provider.name,
                    event_kind=delivery.event.kind,
                )
                if wait is None:
                    raise
            await asyncio.sleep(wait)

    async def start(self) -> None:
        """Prepare to deliver (called at lifespan startup or first use); idempotent."""

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything accepted so far has been delivered or reported."""

    async def aclose(self) -> None:
        """Deliver what is pending within the transport's limits, then release resources."""
