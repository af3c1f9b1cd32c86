"""The transport contract, and what every transport shares: how an event leaves the process.

- :class:`Transport`, as small as httpx's: :meth:`Transport.attempt` makes exactly one try at
  one :class:`Delivery`, :meth:`Transport.aclose` releases what it holds. Retrying is not the
  transport's business: :meth:`Transport.send` (inline), the background queue and the outbox
  schedule attempts with the transport's ``retry`` policy, through the one retry step,
  :func:`next_retry` (how long to wait, counted in ``stats.retried`` and logged, or the error
  marked as given up; only *how* a layer waits differs: a sleep, a timer, a row due later).
- :class:`TrackResult`: what a tracking call returns.
- :class:`DeliveryStats`: the counters, and the observer hook (``stats.subscribe(callback)``,
  called synchronously with a :class:`DeliveryRecord`; nothing is built when nobody listens).
  Whoever finishes an event counts it.
- Event ids in log lines a log shipper keeps whole (at most 8 KB each), for the reports of
  events not delivered.

One concept, the contract and the records every layer writes through it: the retry step, the
counters and the id lines are what ``send``, the queue and the outbox have in common.

Example:
    >>> id_lines("2 events not delivered", ["evt_1", "evt_2"])
    ['2 events not delivered: evt_1, evt_2']
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from .._events import Event, LeadEvent, order_keys
from .._exceptions import DeliveryError
from .._providers import Outcome, Provider, ProviderRequest

__all__ = [
    "COUNTERS",
    "MAX_LINE_BYTES",
    "Delivery",
    "DeliveryObserver",
    "DeliveryRecord",
    "DeliveryStats",
    "Observers",
    "RecordKind",
    "RetryCounter",
    "RetryPolicy",
    "TrackResult",
    "Transport",
    "id_chunks",
    "id_lines",
    "log_ids",
    "log_retry",
    "next_retry",
    "notify",
    "parse_retry_after",
    "report_undelivered",
    "within_refused",
]


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
    "paced",
    "rate_limited",
]


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """What an observer receives: one thing that happened to one event (or to delivery).

    ``kind`` is one of :data:`RecordKind`. ``event_id``, ``provider`` (``"dub"``, ``"pimms"``) and
    ``event_kind`` (``"lead"``, ``"sale"``, ``"customer"``) name the event, when there is one
    (``paused``/``resumed`` concern the whole transport). An ``attempt`` record carries its
    ``duration`` in seconds and the HTTP ``status_code`` (None for a network error); ``reason``
    is the error code, outcome reason or cause, when known. A ``paced`` record carries the
    seconds a request waited for the rate limit's pace (``duration``), a ``rate_limited`` one
    a 429 met.

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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long and how often to retry an event before reporting it as failed.

    The defaults carry an event through a bad spell of about ten minutes: backoff doubles from
    ``initial_backoff`` up to ``max_backoff``, a server's ``Retry-After`` is honoured as a minimum
    but clamped to ``max_retry_after``, and the event is given up after ``max_attempts`` tries or
    ``max_elapsed`` seconds, whichever comes first. ``RetryPolicy(max_attempts=1)`` never retries.

    Example:
        >>> RetryPolicy(max_elapsed=60).max_attempts
        40
    """

    max_attempts: int = 40
    max_elapsed: float = 600.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("max_elapsed", "initial_backoff", "max_backoff", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")

    def backoff(self, retry: int) -> float:
        """Jittered delay before retry number ``retry`` (1-based): half to all of the cap.

        Example:
            >>> 0.25 <= RetryPolicy(initial_backoff=0.5).backoff(1) <= 0.5
            True
        """
        cap = min(self.max_backoff, self.initial_backoff * 2 ** min(retry - 1, 30))
        return random.uniform(cap / 2, cap)

    def next_wait(self, attempts: int, elapsed: float, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when the budget is spent.

        ``retry_after`` (the server's hint) is a minimum, clamped to ``max_retry_after``.

        Example:
            >>> RetryPolicy(max_attempts=3).next_wait(3, elapsed=1.0, retry_after=None) is None
            True
            >>> RetryPolicy(max_backoff=1).next_wait(1, elapsed=0.0, retry_after=5.0)
            5.0
        """
        wait = self.backoff(attempts)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        if attempts >= self.max_attempts or elapsed + wait > self.max_elapsed:
            return None
        return wait


class RetryCounter(Protocol):
    """Where :func:`next_retry` counts retries: anything with a ``retried`` counter.

    Example:
        >>> counter: RetryCounter = DeliveryStats()
        >>> counter.retried
        0
    """

    retried: int


def log_retry(error: DeliveryError, attempt: int, wait: float) -> None:
    """Log one retry with structured fields (``event_id``, ``attempt``, ``retry_in``).

    Example:
        >>> log_retry(DeliveryError("evt_1", "http_503", "unavailable", retryable=True), 1, 0.5)
    """
    logger.info(
        "event %s: attempt %d failed (%s), retrying in %.2fs",
        error.event_id,
        attempt,
        error.code if error.status_code is None else error.status_code,
        wait,
        extra={"event_id": error.event_id, "attempt": attempt, "retry_in": wait},
    )


def next_retry(
    error: DeliveryError,
    policy: RetryPolicy,
    *,
    attempts: int,
    elapsed: float,
    stats: RetryCounter,
    provider: str | None = None,
    event_kind: str | None = None,
) -> float | None:
    """The retry step, after attempt number ``attempts`` failed with ``error``.

    Returns the seconds to wait before the next attempt, having counted it
    (``stats.retried += 1``) and logged it (:func:`log_retry`). Returns ``None`` when there is
    no next attempt: ``error`` is final, or the budget of ``policy`` is spent (then ``error``
    notes it gave up, unless the policy never allowed a retry). The caller does the waiting.
    If ``stats`` has ``observers`` (a :class:`DeliveryStats`), they get a ``retried`` record
    (naming ``provider`` and ``event_kind`` when given).

    Example:
        >>> stats = DeliveryStats()
        >>> error = DeliveryError("evt_1", "http_503", "unavailable", retryable=True)
        >>> policy = RetryPolicy(initial_backoff=1, max_backoff=1, max_attempts=2)
        >>> 0.5 <= next_retry(error, policy, attempts=1, elapsed=0.0, stats=stats) <= 1
        True
        >>> next_retry(error, policy, attempts=2, elapsed=1.0, stats=stats) is None
        True
        >>> stats.retried, str(error).endswith("(gave up after 2 attempts in 1.0s)")
        (1, True)
    """
    if not error.retryable:
        return None
    wait = policy.next_wait(attempts, elapsed, error.retry_after)
    if wait is None:
        if policy.max_attempts > 1:
            error.gave_up(attempts, elapsed)
        return None
    stats.retried += 1
    observers = getattr(stats, "observers", None)
    if isinstance(observers, Observers) and observers:
        observers.emit(
            "retried",
            event_id=error.event_id,
            provider=provider,
            event_kind=event_kind,
            status_code=error.status_code,
            reason=error.code,
        )
    log_retry(error, attempts, wait)
    return wait


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` if absent or unreadable.

    Understands delay-seconds, an HTTP date, and a Unix timestamp in milliseconds (Dub's rate
    limiter sends that one); a Unix timestamp in seconds is accepted too. Never negative.

    Example:
        >>> parse_retry_after("3")
        3.0
        >>> now = 1_800_000_000.0
        >>> parse_retry_after(str(int((now + 5) * 1000)), now=now)  # Dub: Unix milliseconds
        5.0
        >>> parse_retry_after("Fri, 15 Jan 2027 08:00:10 GMT", now=1_800_000_000.0)
        10.0
        >>> parse_retry_after("soon") is None
        True
    """
    if not value:
        return None
    value = value.strip()
    now = time.time() if now is None else now
    try:
        number = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT by definition
            return None
        return max(0.0, when.timestamp() - now)
    if number != number or number < 0:  # NaN or negative
        return None
    if number >= 1e11:  # milliseconds since the epoch (year 1973 onwards)
        return max(0.0, number / 1000 - now)
    if number >= 1e9:  # seconds since the epoch
        return max(0.0, number - now)
    return number


# eq=False: deliveries are compared and hashed by identity (the event holds dicts).
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

    @property
    def order(self) -> tuple[tuple[str, str, str] | None, tuple[str, str, str] | None]:
        """The order keys this event waits on and holds, each ``(provider, key space, value)``
        or None.

        It is not attempted while an event that holds its wait key, tracked before it, is
        unfinished: a sale and a customer update wait on their customer, which a lead holds; a
        refund waits on its invoice, which a sale with that invoice id holds
        (:data:`~asgi_attribution._events.ORDER_WAITS`).

        Example:
            >>> from asgi_attribution import DUB, SaleEvent
            >>> Delivery(SaleEvent(customer_external_id="u", amount=1, invoice_id="i"), DUB).order
            (('dub', 'customer', 'u'), ('dub', 'invoice', 'i'))
        """
        waits, holds = order_keys(self.event.kind, self.event.__dict__)
        name = self.provider.name
        return (
            None if waits is None else (name, *waits),
            None if holds is None else (name, *holds),
        )

    def from_queue(self) -> Delivery:
        """This delivery as a queue or an outbox sends it, after ``track_*`` returned.

        A lead the caller gave no ``mode`` goes with ``mode="wait"``: nobody waits on the
        answer, and the provider then has the lead before it answers (Dub caches it, PIMMS
        creates the customer), so the sale tracked next finds it. A mode the caller chose is
        kept.

        Example:
            >>> from asgi_attribution import DUB
            >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
            >>> Delivery(lead, DUB).from_queue().request().json["mode"]
            'wait'
            >>> chosen = lead.model_copy(update={"mode": "async"})
            >>> Delivery(chosen, DUB).from_queue().request().json["mode"]
            'async'
        """
        event = self.event
        if not isinstance(event, LeadEvent) or event.mode is not None:
            return self
        return replace(self, event=event.model_copy(update={"mode": "wait"}))


# Not frozen: a frozen dataclass makes one object.__setattr__ call per field, which cost a third
# of a burst of signups into the outbox (bench/outbox_paired.py). Nothing here mutates one.
@dataclass(slots=True)
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
    "rate_limited": "rate_limited",
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
    ``rate_limited``: 429s met (each one waits for the reset; one stating the rate limit costs
    its event no attempt); ``pace_wait``: seconds requests waited, in all, for the pace of the
    key's rate limit.

    :meth:`subscribe` a callback to get a :class:`DeliveryRecord` for each of: ``queued``,
    ``sent``, ``retried``, ``failed``, ``dropped``, ``duplicate``, ``not_recorded``, ``paused``,
    ``resumed``, ``paced``, ``rate_limited``, and an ``attempt`` record (``duration`` in
    seconds, HTTP ``status_code``) per attempt. The layers call :meth:`count`; with no
    subscriber it only moves the counter.

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
    rate_limited: int = 0
    pace_wait: float = 0.0
    observers: Observers = field(default_factory=Observers, repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        """The counters as a plain dict (for metrics or logs); ``pace_wait`` in seconds."""
        return {
            "queued": self.queued,
            "sent": self.sent,
            "retried": self.retried,
            "failed": self.failed,
            "dropped": self.dropped,
            "duplicates": self.duplicates,
            "not_recorded": self.not_recorded,
            "rate_limited": self.rate_limited,
            "pace_wait": round(self.pace_wait, 3),
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
        elif kind == "paced" and duration is not None:
            self.pace_wait += duration
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


def within_refused(what: object) -> TypeError:
    """The error for ``within=`` on a transport or store that cannot join a transaction.

    Example:
        >>> str(within_refused(MemoryTransport())).endswith("(MemoryTransport cannot)")
        True
    """
    return TypeError(
        "within= needs Tracker(outbox='postgresql://...'): only a store in your database "
        f"can join your transaction ({type(what).__name__} cannot)"
    )


class Transport:
    """Delivers events. Subclass it and implement :meth:`attempt`: one try, no retries.

    ``attempt`` returns a :class:`TrackResult` or raises :class:`DeliveryError` (with
    ``retryable`` and ``retry_after``). The transport's ``retry`` policy and ``timeout`` (the
    bound of one attempt) are read by whatever schedules its attempts: :meth:`send` inline,
    :class:`BackgroundTransport` and :class:`OutboxTransport` in the background.

    Whoever finishes an event counts it in :attr:`stats`: :meth:`send` counts what it delivered
    or failed inline; the background and outbox layers count what they queue and finish.
    :meth:`append_within` stores an event inside the caller's database transaction; only an
    outbox over a store in that database can (the others raise ``TypeError``).

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

    #: When :meth:`send` and the background layers try a failed attempt again.
    retry: RetryPolicy = RetryPolicy()
    #: Seconds one attempt may take (the outbox's shutdown grace for attempts on the wire).
    timeout: float = 10.0

    _stats: DeliveryStats | None = None

    @property
    def stats(self) -> DeliveryStats:
        """This transport's counters: what it retried, and the events it finished.

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

        Subclasses implement this.
        """
        raise TypeError(f"{type(self).__name__} must implement attempt()")

    async def send(self, delivery: Delivery) -> TrackResult:
        """Deliver one event inline: attempts, retried within ``retry``, then the answer.

        Raises the last :class:`DeliveryError` when the error is final or the budget is spent;
        a fault of the whole integration (``integration=True``: 401, 403, a wrong path, a
        redirect) is final, so it raises at once.
        The event is counted here (``sent``, or ``failed``): this call finishes it. The
        background and outbox layers override this to queue or store the event instead.
        """
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                result = await self.attempt(delivery)
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
                    self.stats.count("failed", delivery, reason=error.code)
                    raise
            else:
                if result.status == "sent":
                    self.stats.delivered(delivery, result)
                return result
            await asyncio.sleep(wait)

    def as_returned(self, result: TrackResult, *, started: bool) -> TrackResult:
        """``result``, a delivery the provider answered elsewhere (an override, in tests), as
        this transport's :meth:`send` would have returned it: as is for an inline send.

        Example:
            >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
            >>> Transport().as_returned(TrackResult("sent", lead), started=True).status
            'sent'
        """
        return result

    def check_within(self) -> None:
        """Raise ``TypeError`` unless :meth:`append_within` can store events in the caller's
        database transaction. Only an outbox over a store in that database can.

        Example:
            >>> try:
            ...     Transport().check_within()
            ... except TypeError as exc:
            ...     print("needs Tracker(outbox='postgresql://...')" in str(exc))
            True
        """
        raise within_refused(self)

    async def append_within(self, delivery: Delivery, connection: object) -> TrackResult:
        """Store ``delivery`` on ``connection``, inside the caller's open transaction: their
        commit stores it, their rollback discards it. Raises ``TypeError`` (see
        :meth:`check_within`) unless the transport can."""
        self.check_within()
        raise NotImplementedError  # a transport whose check passes implements this

    async def start(self) -> None:
        """Prepare to deliver (called at lifespan startup or first use); idempotent."""

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything accepted so far has been delivered or reported."""

    async def aclose(self) -> None:
        """Deliver what is pending within the transport's limits, then release resources."""


#: The longest log line written with event ids (shippers split or cut longer ones).
MAX_LINE_BYTES = 8 * 1024


def id_chunks(
    head: str, ids: Iterable[str], limit: int = MAX_LINE_BYTES
) -> list[tuple[str, list[str]]]:
    """``(line, ids on it)`` pairs: ``head: id, id, ...`` in lines of at most ``limit`` bytes.

    Lines after the first say they continue (``head (continued): ...``).

    Example:
        >>> chunks = id_chunks("held", [f"evt_{i:03d}" for i in range(10)], limit=40)
        >>> all(len(line.encode()) <= 40 for line, _ in chunks), len(chunks)
        (True, 4)
        >>> chunks[1]
        ('held (continued): evt_004, evt_005', ['evt_004', 'evt_005'])
    """
    chunks: list[tuple[str, list[str]]] = []
    line, on_line = head + ": ", list[str]()
    for event_id in ids:
        piece = ", " + event_id if on_line else event_id
        if on_line and len((line + piece).encode()) > limit:
            chunks.append((line, on_line))
            line, on_line, piece = head + " (continued): ", [], event_id
        line += piece
        on_line.append(event_id)
    if on_line:
        chunks.append((line, on_line))
    return chunks


def id_lines(head: str, ids: Iterable[str], limit: int = MAX_LINE_BYTES) -> list[str]:
    """The lines of :func:`id_chunks`.

    Example:
        >>> id_lines("2 events not delivered", ["evt_1", "evt_2"])
        ['2 events not delivered: evt_1, evt_2']
    """
    return [line for line, _ in id_chunks(head, ids, limit)]


def log_ids(level: int, head: str, ids: list[str]) -> None:
    """Log ``head`` with every id in ``ids``, in lines of at most :data:`MAX_LINE_BYTES`.

    Each record carries ``event_ids`` (the ids on that line) as a structured field.

    Example:
        >>> log_ids(logging.WARNING, "1 event not yet delivered", ["evt_1"])
    """
    for line, on_line in id_chunks(head, ids):
        logger.log(level, "%s", line, extra={"event_ids": on_line})


async def notify(callback: Callable[..., object] | None, *args: object) -> None:
    """Call a user's callback (sync or async); its failure is logged, never raised.

    Example:
        >>> import asyncio
        >>> asyncio.run(notify(print, "event evt_1", "dropped"))
        event evt_1 dropped
    """
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # a user's callback must not stop delivery
        logger.exception("delivery callback %r failed", callback)


async def report_undelivered(
    undelivered: list[Delivery],
    reason: str,
    stats: DeliveryStats,
    on_drop: Callable[..., object] | None,
) -> None:
    """Report events given up at shutdown: ERROR lines by id, ``stats.dropped``, ``on_drop``.

    Example:
        >>> import asyncio
        >>> asyncio.run(report_undelivered([], "not delivered", DeliveryStats(), None))
    """
    if not undelivered:
        return
    ids = [d.event.event_id for d in undelivered]
    log_ids(logging.ERROR, f"{len(undelivered)} events {reason}", ids)
    for delivery in undelivered:
        stats.count("dropped", delivery, reason="shutdown")
        await notify(on_drop, delivery, reason)
