"""Pausing delivery on a fault of the whole integration, for the queue and the outbox alike.

A revoked key (401), a key without the right for the track routes (403), a wrong ``base_url``
(a 404 or 405 without the provider's JSON error envelope: an HTML page, a proxy's page, an
empty body) or a moved API (3xx) say nothing about the event that met them: every event would
meet them. They are raised as :class:`IntegrationError` (a :class:`DeliveryError` with
``integration=True``, never retryable by the per-event retry step). An answer that carries the
provider's envelope is about its event (:meth:`~asgi_attribution.Provider.refusal`: a disabled
link, a lead not found, a workspace without a partner program): it ends that event and only
that event, and never pauses.

On such a fault, delivery pauses instead of discarding events one by one: the background queue
holds its jobs, an outbox stops claiming (every worker of the store in this process) and leaves
its rows pending with their budgets untouched. One attempt probes every ``pause_interval``
seconds, and the first 2xx resumes delivery. While paused, one ERROR at most once a minute gives
the cause and the number of events held. :class:`Pause` is that state, used by both.

No event is held forever: one that meets such a fault again after delivery resumed (other
events went through, so the fault is its own) is struck each time, and at
:data:`STRIKES` strikes it is failed and reported instead of pausing everyone once more
(:meth:`Pause.strike`).

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
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from .._exceptions import DeliveryError

__all__ = [
    "LOG_EVERY",
    "STRIKES",
    "Pause",
    "describe",
    "is_integration_fault",
    "pause_for",
]

logger = logging.getLogger("asgi_attribution")

#: At most one ERROR per this many seconds while paused.
LOG_EVERY = 60.0

#: Times an event may meet a fault of the whole integration in separate pauses (delivery
#: resumed in between: other events went through) before it is failed rather than held again.
STRIKES = 3

# Events with strikes remembered at most (the oldest forgotten first): only events that met a
# fault are here, and one forgotten starts again from one strike, still bounded.
_STRIKES_KEPT = 10_000

# One pause per store (by description) in this process: every outbox over it stops together.
_PAUSES: dict[str, Pause] = {}


def is_integration_fault(error: BaseException) -> bool:
    """True for an error of the whole integration (anything with a true ``integration`` flag).

    Example:
        >>> is_integration_fault(IntegrationError("evt_1", "forbidden", "no", status_code=403))
        True
        >>> is_integration_fault(DeliveryError("evt_1", "bad_request", "no", status_code=400))
        False
    """
    return getattr(error, "integration", False) is True


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

    __slots__ = (
        "_logged",
        "_next_probe",
        "_strikes",
        "active",
        "cause",
        "interval",
        "probe",
        "resumes",
        "since",
        "store",
    )

    def __init__(self, interval: float, store: str | None = None) -> None:
        self.interval = interval
        self.store = store
        self.probe: asyncio.TimerHandle | None = None  # the next timed probe, while paused
        self.active = False
        self.cause: BaseException | None = None
        self.since = 0.0
        self._next_probe = 0.0
        self._logged = float("-inf")
        self.resumes = 0  # how many times delivery resumed: other events went through
        # event id -> (strikes, self.resumes when it was last struck)
        self._strikes: OrderedDict[str, tuple[int, int]] = OrderedDict()

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

    def strike(self, event_id: str, cause: DeliveryError) -> DeliveryError | None:
        """Note that ``event_id`` met ``cause``; the error to fail it with once it is struck out.

        A strike counts once per pause: the event met the fault again after delivery resumed,
        so other events went through and the fault is the event's own (a route only it takes,
        an answer only it gets). At :data:`STRIKES` the event is failed (not retried) with an
        error that says so, and forgotten here; before that, None: hold it.

        Example:
            >>> pause = Pause(30.0)
            >>> fault = IntegrationError("evt_1", "wrong_path", "HTML 404", status_code=404)
            >>> [pause.strike("evt_1", fault) is None for _ in range(5)]  # one pause: one strike
            [True, True, True, True, True]
            >>> for _ in range(2):
            ...     pause.resumes += 1  # delivery resumed, the event met the fault again
            ...     failed = pause.strike("evt_1", fault)
            >>> failed.code, failed.retryable, failed.integration
            ('wrong_path', False, False)
        """
        count, seen = self._strikes.pop(event_id, (0, -1))
        if seen != self.resumes:
            count += 1
        if count < STRIKES:
            self._strikes[event_id] = (count, self.resumes)
            while len(self._strikes) > _STRIKES_KEPT:
                self._strikes.popitem(last=False)
            return None
        message = (
            f"{cause.message}; met {count} times, each after delivery had resumed for the "
            "other events: failed rather than held again"
        )
        return DeliveryError(event_id, cause.code, message, status_code=cause.status_code)

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

    def clear(self) -> None:
        """Forget the pause without resuming (delivery stops: shutdown); logs nothing.

        Example:
            >>> pause = Pause(30.0)
            >>> pause.begin(OSError("x"), held=1), pause.clear(), pause.active, pause.resumes
            (True, None, False, 0)
        """
        self.active = False
        self.cause = None
        self.cancel_probe()

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
            self.resumes += 1
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
