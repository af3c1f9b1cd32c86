"""Pausing delivery on a fault of the whole integration, and saying so (at most once a minute).

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
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .._exceptions import DeliveryError

__all__ = ["LOG_EVERY", "Pause"]

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
