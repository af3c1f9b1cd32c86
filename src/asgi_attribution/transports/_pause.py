"""Pausing an outbox on a fault of the whole integration (a revoked key, a wrong path).

Such a fault says nothing about the event that met it: every event would meet it. So the
outbox stops claiming (for every worker of the store in this process), leaves the rows pending
with their budgets untouched, probes with one row every ``pause_interval`` seconds, and resumes
on the first 2xx. While paused it logs one ERROR at most once a minute with the cause and the
number of events held.

Faults of the whole integration, told apart from answers about one event.

A revoked key (401), a key without the right (403), a wrong ``base_url`` (a 404 that names no
event, a 405) or a moved API (3xx) say nothing about the event that met them: every event would
meet them. They are raised as :class:`IntegrationError` (a :class:`DeliveryError` with
``integration=True``, never retryable by the per-event retry step), and the background queue
pauses on them instead of discarding events. Per-event answers (400, 409, 422, a 404 "click not
found") stay final failures of their event.

Pausing delivery on a fault of the whole integration, and saying so (at most once a minute).

A revoked key or a wrong ``base_url`` fails every event the same way. Instead of discarding
them one by one, :class:`BackgroundTransport` holds them and probes with one attempt every
``pause_interval`` seconds; this module keeps the state and the log lines of that pause.

Example:
    >>> from asgi_attribution import IntegrationError
    >>> pause = Pause(interval=30.0)
    >>> pause.begin(IntegrationError("evt_1", "unauthorized", "bad key", status_code=401), 3)
    True
    >>> pause.active, pause.cause.code
    (True, 'unauthorized')
    >>> pause.end(3) >= 0, pause.active
    (True, False)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .._exceptions import DeliveryError

__all__ = [
    "LOG_EVERY",
    "OutboxPause",
    "Pause",
    "is_integration_fault",
    "pause_for",
    "per_event_not_found",
]


# A 404 about the event names what was not found: Dub's "Click event not found for clickId: x",
# "Lead event not found for externalId: ...", "Customer ext_u not found." A wrong path gives
# HTML, a generic "Not Found", or names the route ("POST /track/lead not found").
_ENTITY_NOT_FOUND = re.compile(
    r"^\s*(click|lead|sale|customer|link|partner|commission)\b[^/]*\bnot found", re.IGNORECASE
)


def is_integration_fault(error: BaseException) -> bool:
    """True for an error of the whole integration (anything with a true ``integration`` flag).

    Example:
        >>> is_integration_fault(IntegrationError("evt_1", "forbidden", "no", status_code=403))
        True
        >>> is_integration_fault(DeliveryError("evt_1", "bad_request", "no", status_code=400))
        False
    """
    return getattr(error, "integration", False) is True


def per_event_not_found(body: Any) -> str | None:
    """The code of a 404 whose JSON error names the event's click, customer or lead, else None.

    Example:
        >>> per_event_not_found(
        ...     {"error": {"code": "not_found", "message": "Click event not found for clickId: c"}})
        'click_not_found'
        >>> per_event_not_found({"error": {"code": "not_found", "message": "Customer u not found"}})
        'not_found'
        >>> per_event_not_found({"error": {"code": "not_found", "message": "POST /x not found"}})
        >>> per_event_not_found("<html>Not Found</html>") is None
        True
    """
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    message = body["error"].get("message")
    if not isinstance(message, str):
        return None
    match = _ENTITY_NOT_FOUND.match(message)
    if match is None:
        return None
    if match.group(1).lower() == "click":
        return "click_not_found"
    return str(body["error"].get("code") or "not_found")[:100]


logger = logging.getLogger("asgi_attribution")

#: At most one ERROR per this many seconds while paused.
LOG_EVERY = 60.0


class Pause:
    """Whether delivery is paused, why, since when; and its rate-limited ERROR lines."""

    __slots__ = ("_logged", "active", "cause", "interval", "probe", "since")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.probe: asyncio.TimerHandle | None = None  # the next probe, while paused
        self.active = False
        self.cause: DeliveryError | None = None
        self.since = 0.0
        self._logged = float("-inf")

    def schedule(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        run: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        """Run ``run()`` as a task of ``loop`` in ``delay`` seconds (replacing a pending probe)."""
        self.cancel_probe()
        self.probe = loop.call_later(delay, lambda: loop.create_task(run()))

    def cancel_probe(self) -> None:
        """Forget the pending probe, if any."""
        if self.probe is not None:
            self.probe.cancel()
            self.probe = None

    def describe(self) -> str:
        """The cause in a few words, e.g. ``HTTP 401 unauthorized: check the API key``."""
        cause = self.cause
        if cause is None:
            return "no cause"
        status = f"HTTP {cause.status_code} " if cause.status_code is not None else ""
        return f"{status}{cause.code}: {cause.message}"

    def begin(self, cause: DeliveryError, held: int) -> bool:
        """Pause (or stay paused) on ``cause``; True if delivery was running until now."""
        self.cause = cause
        if self.active:
            self.still(held)
            return False
        self.active = True
        self.since = time.monotonic()
        self._logged = float("-inf")
        self.still(held)
        return True

    def still(self, held: int) -> None:
        """A probe failed again: log the ERROR if the last one is a minute old."""
        now = time.monotonic()
        if now - self._logged < LOG_EVERY:
            return
        self._logged = now
        logger.error(
            "delivery paused for %.0fs: %s; %d events held (none discarded), "
            "probing every %gs; delivery resumes by itself once the provider accepts",
            now - self.since,
            self.describe(),
            held,
            self.interval,
            extra={"paused": True, "cause": self.cause.code if self.cause else None, "held": held},
        )

    def end(self, held: int) -> float:
        """Resume; returns how long the pause lasted (seconds) and logs it."""
        lasted = time.monotonic() - self.since
        if self.active:
            logger.warning(
                "delivery resumed after %.0fs paused (%s); delivering %d held events",
                lasted,
                self.describe(),
                held,
            )
        self.active = False
        self.cause = None
        self.cancel_probe()
        return lasted


# One pause per store (by description) in this process: every outbox over it stops together.
_PAUSES: dict[str, OutboxPause] = {}


class OutboxPause:
    """Whether claiming is paused, why, and when the next probe is due (monotonic time).

    Example:
        >>> pause = OutboxPause("events.db", interval=30.0)
        >>> pause.begin("HTTP 401 unauthorized: bad key", held=3)
        >>> pause.active, pause.probe_due()
        (True, False)
        >>> round(pause.end(held=3)) >= 0, pause.active
        (True, False)
    """

    def __init__(self, description: str, interval: float) -> None:
        self.description = description
        self.interval = interval
        self.active = False
        self.cause = ""
        self.since = 0.0
        self._next_probe = 0.0
        self._logged = float("-inf")

    def begin(self, cause: str, held: int) -> None:
        """Pause (or stay paused) on ``cause``; the next probe is ``interval`` from now."""
        now = time.monotonic()
        if not self.active:
            self.active, self.since, self._logged = True, now, float("-inf")
        self.cause = cause
        self._next_probe = now + self.interval
        self.still(held)

    def probe_due(self) -> bool:
        """True when a probe may run now (it then holds the slot for one interval)."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.interval
        return True

    def wait(self) -> float:
        """Seconds until the next probe."""
        return max(0.0, self._next_probe - time.monotonic())

    def still(self, held: int) -> None:
        """Log the ERROR if the last one is a minute old."""
        now = time.monotonic()
        if now - self._logged < LOG_EVERY:
            return
        self._logged = now
        logger.error(
            "outbox %s: delivery paused for %.0fs: %s; %d events held in the outbox (none "
            "discarded), probing every %gs; it resumes by itself once the provider accepts",
            self.description,
            now - self.since,
            self.cause,
            held,
            self.interval,
            extra={"paused": True, "held": held},
        )

    def end(self, held: int) -> float:
        """Resume; returns how long the pause lasted (seconds) and logs it."""
        lasted = time.monotonic() - self.since
        if self.active:
            logger.warning(
                "outbox %s: delivery resumed after %.0fs paused (%s); delivering %d held events",
                self.description,
                lasted,
                self.cause,
                held,
            )
        self.active = False
        return lasted


def pause_for(description: str, interval: float) -> OutboxPause:
    """The pause shared by every outbox over the store ``description`` in this process.

    Example:
        >>> pause_for("events.db", 30.0) is pause_for("events.db", 30.0)
        True
    """
    pause = _PAUSES.get(description)
    if pause is None:
        pause = _PAUSES[description] = OutboxPause(description, interval)
    return pause
