"""When to try a failed attempt again: the :class:`RetryPolicy`, and the one retry step.

Every layer that retries (inline :meth:`Transport.send`, the background queue, the outbox) runs
the same step, :func:`next_retry`, after a retryable failure: how long to wait, counted in
``stats.retried`` and logged, or the error marked as given up. Only *how* the layer waits
differs (a sleep, a timer, a row due later in the store).
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Protocol

from .._exceptions import DeliveryError
from .observe import Observers

__all__ = ["RetryCounter", "RetryPolicy", "log_retry", "next_retry", "parse_retry_after"]

logger = logging.getLogger("asgi_attribution")


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
