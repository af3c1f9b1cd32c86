"""A refund's one attempt in two requests: find the sale's commission, then change it.

Dub creates a sale's commission after it answers the sale, so a refund may look before the
commission exists. Such a lookup fails the attempt retryably (``commission_pending``, with a
short ``retry_after``), and the one retry step repeats it. Once a refund has looked for
``window`` seconds (10 minutes by default, counted from its first attempt in this process), or
is at its last attempt, it finishes as delivered, ``not_recorded`` with ``no_commission``: the
sale earned no partner commission (an organic sale), and there is nothing to refund. The window
is cut to end before the retry budget does, so the verdict always comes before the retry step
would give up.

A partial refund is not idempotent on Dub's side (the commissions API ignores
``Idempotency-Key``): a ``PATCH`` whose answer was lost (a timeout) and is retried lowers the
amount twice. A full refund is: a retried one finds the commission refunded (``duplicate``).
"""

from __future__ import annotations

import logging
import threading
import time

from .._exceptions import DeliveryError, IntegrationError
from ..events import RefundEvent
from ..providers import Outcome, ProviderRequest
from .answers import Answer, delivered, error_from, sent
from .base import Delivery, TrackResult
from .retry import RetryPolicy

__all__ = [
    "PENDING_RETRY_AFTER",
    "REFUND_WINDOW",
    "CommissionWaits",
    "after_lookup",
    "after_update",
]

logger = logging.getLogger("asgi_attribution")

#: Seconds between lookups of a commission still being created (the retry step's minimum).
PENDING_RETRY_AFTER = 2.0
#: Seconds a refund looks for its sale's commission before finishing as ``no_commission``.
REFUND_WINDOW = 600.0
# The verdict comes this long before the retry budget would end.
_MARGIN = 1.0


class CommissionWaits:
    """Since when, and in how many attempts, each refund of this process has been looking.

    Kept in memory (a restart starts the window again), for at most ``limit`` refunds at once.

    Example:
        >>> waits = CommissionWaits(window=600.0)
        >>> waits.begin("evt_1")
        >>> one = RetryPolicy(max_attempts=1)
        >>> waits.exhausted("evt_1", RetryPolicy()), waits.exhausted("evt_1", one)
        (False, True)
        >>> waits.end("evt_1"); len(waits)
        0
    """

    def __init__(self, window: float = REFUND_WINDOW, *, limit: int = 10_000) -> None:
        if window < 0:
            raise ValueError(f"refund_window must be >= 0 seconds, got {window}")
        self.window = float(window)
        self.limit = limit
        self._since: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()  # one transport may serve loops on several threads

    def __len__(self) -> int:
        return len(self._since)

    def begin(self, event_id: str) -> None:
        """Note one more attempt of the refund ``event_id`` (the first one starts its window)."""
        with self._lock:
            first, attempts = self._since.pop(event_id, (time.monotonic(), 0))
            self._since[event_id] = (first, attempts + 1)
            while len(self._since) > self.limit:  # refunds given up by a layer: forget the oldest
                del self._since[next(iter(self._since))]

    def end(self, event_id: str) -> None:
        """Forget the refund ``event_id``: it finished."""
        with self._lock:
            self._since.pop(event_id, None)

    def exhausted(self, event_id: str, policy: RetryPolicy) -> bool:
        """True when ``event_id`` has looked long enough, or ``policy`` allows no next attempt."""
        with self._lock:
            first, attempts = self._since.get(event_id, (time.monotonic(), 1))
        wait = max(policy.max_backoff, min(PENDING_RETRY_AFTER, policy.max_retry_after))
        window = min(self.window, policy.max_elapsed - wait - _MARGIN)
        return attempts >= policy.max_attempts or time.monotonic() - first >= window


def _final(delivery: Delivery, answer: Answer) -> DeliveryError:
    error = error_from(delivery.event.event_id, answer)
    if isinstance(error, IntegrationError) and error.code == "forbidden":
        # A key made for tracking may lack the commissions scopes: that fails the refunds,
        # and must not pause the delivery of every other event.
        return DeliveryError(error.event_id, error.code, error.message, status_code=403)
    return error


def _finished(delivery: Delivery, answer: Answer, outcome: Outcome, reason: str) -> TrackResult:
    event = delivery.event
    logger.info(
        "refund %s not applied by %s: %s",
        event.event_id,
        delivery.provider.name,
        reason,
        extra={"event_id": event.event_id, "outcome": outcome, "outcome_reason": reason},
    )
    return sent(delivery, answer, outcome, reason)


def after_lookup(
    delivery: Delivery, answer: Answer, waits: CommissionWaits, policy: RetryPolicy
) -> ProviderRequest | TrackResult:
    """The update to send after the lookup ``answer``, or the refund's result without one.

    Raises :class:`DeliveryError` ``commission_pending`` (retryable) while the commission may
    still be on its way, and the lookup's own error for a non-2xx answer.

    Example:
        >>> refund = Delivery(RefundEvent(invoice_id="in_1"), DUB)
        >>> found = Answer(200, [{"id": "cm_1", "invoiceId": "in_1", "status": "pending"}],
        ...                "OK", "GET /commissions")
        >>> after_lookup(refund, found, CommissionWaits(), RetryPolicy()).path
        '/commissions/cm_1'
        >>> none = Answer(200, [], "OK", "GET /commissions")
        >>> after_lookup(refund, none, CommissionWaits(window=0), RetryPolicy()).outcome_reason
        'no_commission'
    """
    event = delivery.event
    assert isinstance(event, RefundEvent)
    if not 200 <= answer.status < 300:
        raise _final(delivery, answer)
    if not isinstance(answer.body, list):
        message = f"{answer.target} answered HTTP {answer.status} without a list (a proxy?)"
        raise DeliveryError(event.event_id, "unexpected_answer", message, retryable=True)
    step = delivery.provider.refund_update(event, answer.body)
    if step is None:
        if waits.exhausted(event.event_id, policy):
            return _finished(delivery, answer, "not_recorded", "no_commission")
        raise DeliveryError(
            event.event_id,
            "commission_pending",
            f"no commission for invoice {event.invoice_id!r} yet",
            retryable=True,
            retry_after=PENDING_RETRY_AFTER,
        )
    if isinstance(step, tuple):
        return _finished(delivery, answer, *step)
    return step


def after_update(delivery: Delivery, answer: Answer) -> TrackResult:
    """The refund's result from the answer of its ``PATCH``.

    Example:
        >>> refund = Delivery(RefundEvent(invoice_id="in_1"), DUB)
        >>> done = Answer(200, {"id": "cm_1", "status": "refunded"}, "OK", "PATCH /x")
        >>> after_update(refund, done).outcome
        'recorded'
    """
    if 200 <= answer.status < 300:
        return delivered(delivery, answer)
    raise _final(delivery, answer)
