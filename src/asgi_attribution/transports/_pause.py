"""Pausing delivery on a fault of the whole integration, for the queue and the outbox alike.

A revoked key (401), a key without the right (403), a wrong ``base_url`` (a 404 that names no
event, a 405) or a moved API (3xx) say nothing about the event that met them: every event would
meet them. They are raised as :class:`IntegrationError` (a :class:`DeliveryError` with
``integration=True``, never retryable by the per-event retry step). Per-event answers (400,
409, 422, a 404 "click not found") stay final failures of their event.

On such a fault, delivery pauses instead of discarding events one by one: the background queue
holds its jobs, an outbox stops claiming (every worker of the store in this process) and leaves
its rows pending with their budgets untouched. One attempt probes every ``pause_interval``
seconds, and the first 2xx resumes delivery. While paused, one ERROR at most once a minute gives
the cause and the number of events held. :class:`Pause` is that state, used by both.

Example:
    >>> from asgi_attribution import IntegrationError
    >>> pause = Pause(interval=30.0)
    >>> pause.begin(IntegrationError("evt_1", "unauthorized", "bad key", status_code=401), 3)
    True
    >>> pause.active, pause.describe()
    (True, 'HTTP 401 unauthorized: bad key')
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
    "Pause",
    "describe",
    "is_integration_fault",
    "pause_for",
    "per_event_not_found",
]

logger = logging.getLogger("asgi_attribution")

#: At most one ERROR per this many seconds while paused.
LOG_EVERY = 60.0

# One pause per store (by description) in this process: every outbox over it stops together.
_PAUSES: dict[str, Pause] = {}


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


def describe(error: BaseException | None) -> str:
    """An error in a few words: ``HTTP 401 unauthorized: bad key``.

    Example:
        >>> describe(DeliveryError("evt_1", "unauthorized", "bad key", status_code=401))
        'HTTP 401 unauthorized: bad key'
        >>> describe(OSError("disk full"))
        'OSError: disk full'
    """
    if error is None:
        return "no cause"
    if isinstance(error, DeliveryError):
        status = f"HTTP {error.status_code} " if error.status_code is not None else ""
        return f"{status}{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


class Pause:
    """Whether delivery is paused, why, since when, when to probe; and its ERROR lines.

    The background queue probes on a timer (:meth:`schedule`); an outbox's claim loop asks
    :meth:`probe_due` between claims. ``store`` names the outbox in the log lines (None for the
    in-memory queue).

    Example:
        >>> pause = Pause(30.0, store="events.db")
        >>> pause.begin(OSError("x"), held=3), pause.probe_due(), pause.wait() > 29
        (True, False, True)
    """

    __slots__ = ("_logged", "_next_probe", "active", "cause", "interval", "probe", "since", "store")

    def __init__(self, interval: float, store: str | None = None) -> None:
        self.interval = interval
        self.store = store
        self.probe: asyncio.TimerHandle | None = None  # the next timed probe, while paused
        self.active = False
        self.cause: BaseException | None = None
        self.since = 0.0
        self._next_probe = 0.0
        self._logged = float("-inf")

    def describe(self) -> str:
        """The cause in a few words, e.g. ``HTTP 401 unauthorized: check the API key``."""
        return describe(self.cause)

    def begin(self, cause: BaseException, held: int) -> bool:
        """Pause (or stay paused) on ``cause``; True if delivery was running until now.

        The next probe is due ``interval`` seconds from now.
        """
        now = time.monotonic()
        self.cause = cause
        self._next_probe = now + self.interval
        started = not self.active
        if started:
            self.active, self.since, self._logged = True, now, float("-inf")
        self.still(held)
        return started

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
        """Forget the pending timed probe, if any."""
        if self.probe is not None:
            self.probe.cancel()
            self.probe = None

    def probe_due(self) -> bool:
        """True when a probe may run now (it then holds the slot for one interval)."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + self.interval
        return True

    def wait(self) -> float:
        """Seconds until the next probe is due."""
        return max(0.0, self._next_probe - time.monotonic())

    def still(self, held: int) -> None:
        """Still paused: log the ERROR if the last one is a minute old."""
        now = time.monotonic()
        if now - self._logged < LOG_EVERY:
            return
        self._logged = now
        where = f"outbox {self.store}: " if self.store is not None else ""
        logger.error(
            "%sdelivery paused for %.0fs: %s; %d events held%s (none discarded), probing every "
            "%gs; delivery resumes by itself once the provider accepts",
            where,
            now - self.since,
            self.describe(),
            held,
            " in the outbox" if self.store is not None else "",
            self.interval,
            extra={"paused": True, "cause": getattr(self.cause, "code", None), "held": held},
        )

    def end(self, held: int) -> float:
        """Resume; returns how long the pause lasted (seconds) and logs it."""
        lasted = time.monotonic() - self.since
        if self.active:
            where = f"outbox {self.store}: " if self.store is not None else ""
            logger.warning(
                "%sdelivery resumed after %.0fs paused (%s); delivering %d held events",
                where,
                lasted,
                self.describe(),
                held,
            )
        self.active = False
        self.cause = None
        self.cancel_probe()
        return lasted


def pause_for(store: str, interval: float) -> Pause:
    """The pause shared by every outbox over the store ``store`` in this process.

    Example:
        >>> pause_for("events.db", 30.0) is pause_for("events.db", 30.0)
        True
    """
    pause = _PAUSES.get(store)
    if pause is None:
        pause = _PAUSES[store] = Pause(interval, store=store)
    return pause
