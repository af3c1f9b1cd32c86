"""The rows an outbox keeps, what a status reports, and the rules about retrying dead letters.

Plain data only (JSON-able, never a pickle or an API key); :mod:`.store` holds the contract that
stores implement and re-exports these names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..._frozen import dict_init
from ...events import Event, validate_event
from ..base import Delivery

__all__ = [
    "LIST_STATES",
    "NOT_RECORDED_OUTCOMES",
    "RETRY_REFUSED",
    "STATES",
    "ListState",
    "OutboxRow",
    "OutboxStatus",
    "State",
    "refused_retry",
    "restart_budget",
]

State = Literal["pending", "inflight", "delivered", "dead"]
STATES: tuple[State, ...] = ("pending", "inflight", "delivered", "dead")

#: What :meth:`OutboxStore.list` takes: a state, or ``not_recorded`` (delivered rows whose
#: outcome says the provider recorded nothing: ``duplicate`` or ``not_recorded``).
ListState = Literal["pending", "inflight", "delivered", "dead", "not_recorded"]
LIST_STATES: tuple[ListState, ...] = ("pending", "inflight", "delivered", "dead", "not_recorded")
NOT_RECORDED_OUTCOMES = ("duplicate", "not_recorded")

#: Dead letters that ``retry_dead`` refuses unless ``force=True``, with the reason.
RETRY_REFUSED = {
    "click_not_found": (
        "the provider reserved the (customer, event name) key when it answered 'click not "
        "found' and keeps it 7 days: a retry would be answered 200 with link: null and record "
        "nothing (force to send it anyway)"
    ),
}


# Without slots, for dict_init: one row per append, fifteen fields (bench/README.md).
@dict_init
@dataclass(frozen=True)
class OutboxRow:
    """One event as the outbox stores it: plain JSON-able data, never a pickle or an API key.

    ``event`` is the event's ``model_dump(mode="json")`` without its ``kind``; ``handle`` is the
    store's own reference (a row id, a stream entry id). Times are the store's clock.
    ``error_code`` is the last error's code (``"http_503"``, ``"click_not_found"``);
    ``outcome`` and ``outcome_reason`` are what the provider's answer said was recorded
    (:attr:`TrackResult.outcome`), on delivered rows.

    Example:
        >>> from asgi_attribution import DUB, LeadEvent
        >>> row = OutboxRow.from_delivery(Delivery(
        ...     LeadEvent(click_id="c1", event_name="Sign up", customer_external_id="u1"), DUB))
        >>> row.kind, row.provider, row.state, row.event["click_id"]
        ('lead', 'dub', 'pending', 'c1')
    """

    event_id: str
    provider: str
    kind: str
    event: dict[str, Any]
    state: State = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    first_attempt_at: float | None = None
    handle: str = field(default="", compare=False)
    error_code: str | None = None
    outcome: str | None = None
    outcome_reason: str | None = None

    @classmethod
    def from_delivery(cls, delivery: Delivery, *, now: float | None = None) -> OutboxRow:
        """The row for a new event, due at once (``now``: the store's clock)."""
        now = time.time() if now is None else now
        # The stored field values: every event field is a str, an int, None or JSON metadata,
        # so this equals model_dump(mode="json") (a test pins it) at a fraction of its cost.
        data = dict(delivery.event.__dict__)
        kind = str(data.pop("kind"))
        return cls(
            event_id=delivery.event.event_id,
            provider=delivery.provider.name,
            kind=kind,
            event=data,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )

    def to_event(self) -> Event:
        """Rebuild and re-validate the event (raises :class:`InvalidEventError` if it no longer
        passes validation)."""
        return validate_event(self.kind, **self.event)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Counts by state, the age of the oldest undelivered event, and problems found.

    ``problems`` lists what is wrong with the store itself (a corrupt page, unreadable rows by
    id, a deleted file, a server that may evict); empty when healthy.

    Example:
        >>> status = OutboxStatus({"pending": 2, "inflight": 1, "delivered": 5, "dead": 0}, 3.5)
        >>> status.unfinished, status.healthy
        (3, True)
    """

    counts: dict[str, int]
    oldest_pending_age: float | None = None
    problems: tuple[str, ...] = ()

    @property
    def unfinished(self) -> int:
        """Events still to deliver: pending (including scheduled retries) or in flight."""
        return self.counts.get("pending", 0) + self.counts.get("inflight", 0)

    @property
    def healthy(self) -> bool:
        """True when no problem with the store was found."""
        return not self.problems


def restart_budget(row: OutboxRow, now: float) -> OutboxRow:
    """A dead letter sent back to pending: a fresh budget of attempts and time.

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {}, state="dead", attempts=40)
        >>> fresh = restart_budget(row, now=1_800_000_000.0)
        >>> fresh.state, fresh.attempts, fresh.next_attempt_at
        ('pending', 0, 1800000000.0)
    """
    return replace(
        row,
        state="pending",
        attempts=0,
        first_attempt_at=None,
        next_attempt_at=now,
        updated_at=now,
    )


def refused_retry(row: OutboxRow) -> str | None:
    """Why ``retry_dead`` refuses this dead letter without ``force``, or None if it may retry.

    Example:
        >>> row = OutboxRow("evt_1", "dub", "lead", {}, state="dead", error_code="click_not_found")
        >>> "7 days" in refused_retry(row)
        True
        >>> refused_retry(OutboxRow("evt_2", "dub", "lead", {}, error_code="http_401")) is None
        True
    """
    return RETRY_REFUSED.get(row.error_code or "")
