"""Pausing an outbox on a fault of the whole integration (a revoked key, a wrong path).

Such a fault says nothing about the event that met it: every event would meet it. So the
outbox stops claiming (for every worker of the store in this process), leaves the rows pending
with their budgets untouched, probes with one row every ``pause_interval`` seconds, and resumes
on the first 2xx. While paused it logs one ERROR at most once a minute with the cause and the
number of events held.
"""

from __future__ import annotations

import logging
import time

__all__ = ["LOG_EVERY", "OutboxPause", "is_integration_fault", "pause_for"]

logger = logging.getLogger("asgi_attribution")

#: At most one ERROR per this many seconds while paused.
LOG_EVERY = 60.0

# One pause per store (by description) in this process: every outbox over it stops together.
_PAUSES: dict[str, OutboxPause] = {}


def is_integration_fault(error: BaseException) -> bool:
    """True for an error that flags the whole integration (``integration=True``).

    Example:
        >>> from asgi_attribution import DeliveryError
        >>> is_integration_fault(DeliveryError("evt_1", "http_503", "busy", retryable=True))
        False
    """
    return bool(getattr(error, "integration", False))


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
