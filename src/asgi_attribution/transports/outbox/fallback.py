"""Where events go while the outbox's store cannot take them: an in-memory queue.

A store outage (Redis down, a full disk, a lock held too long, a deleted file) must not fail
the signup. With ``fallback="memory"`` (the default) each event the store refused goes to a
:class:`BackgroundTransport` over the same inner transport and is delivered from there; its
result says ``durable=False`` (``accepted`` False), and the outage is logged at ERROR once
when it starts (naming the cause) and once when it ends (naming how many events went to
memory). While the outage lasts, the store is tried again at most every ``probe_interval``
seconds; the events in between go straight to memory, so no signup waits on a dead store.
"""

from __future__ import annotations

import logging
import time

from ..background import BackgroundTransport
from ..base import Delivery, DeliveryStats, TrackResult, Transport

__all__ = ["MemoryFallback"]

logger = logging.getLogger("asgi_attribution")


class MemoryFallback:
    """The in-memory queue of an outbox and the bookkeeping of its outages.

    Example:
        >>> import asyncio
        >>> memory = MemoryTransport()
        >>> fallback = MemoryFallback("events.db", memory, DeliveryStats())
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> async def outage():
        ...     fallback.failed("disk full")
        ...     result = await fallback.send(Delivery(lead, DUB))
        ...     fallback.recovered()
        ...     await fallback.aclose()
        ...     return result.status, result.durable, result.accepted
        >>> asyncio.run(outage()), len(memory.events)
        (('queued', False, False), 1)
    """

    def __init__(
        self,
        description: str,
        inner: Transport,
        stats: DeliveryStats,
        *,
        probe_interval: float = 1.0,
        shutdown_timeout: float = 20.0,
    ) -> None:
        self.description = description
        self.inner = inner
        self.stats = stats
        self.probe_interval = probe_interval
        self.shutdown_timeout = shutdown_timeout
        #: Events sent to memory during the current outage (0 when there is none).
        self.count = 0
        #: Events sent to memory since the process started.
        self.total = 0
        self.cause: str | None = None
        self._next_try = 0.0
        self._queue: BackgroundTransport | None = None

    @property
    def in_outage(self) -> bool:
        """True from a store failure until an append succeeds again."""
        return self.cause is not None

    def should_try_store(self) -> bool:
        """False while an outage is recent: send to memory without waiting on the store."""
        if self.cause is None:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self.probe_interval
        return True

    def failed(self, cause: str) -> None:
        """The store refused an append: an outage starts (logged once) or goes on."""
        self._next_try = time.monotonic() + self.probe_interval
        if self.cause is None:
            self.cause = cause
            logger.error(
                "outbox %s cannot store events (%s): they go to the in-memory queue (not "
                "durable: lost if this process dies) until the store takes appends again",
                self.description,
                cause,
            )

    def recovered(self) -> None:
        """An append succeeded: the outage is over (logged with how many went to memory)."""
        if self.cause is None:
            return
        logger.error(
            "outbox %s takes appends again; %d events during the outage (%s) went to the "
            "in-memory queue instead, not durably",
            self.description,
            self.count,
            self.cause,
        )
        self.cause, self.count = None, 0

    async def send(self, delivery: Delivery) -> TrackResult:
        """Queue ``delivery`` in memory; the result says ``durable=False``."""
        if self._queue is None:
            self._queue = BackgroundTransport(
                self.inner, stats=self.stats, shutdown_timeout=self.shutdown_timeout
            )
        self.count += 1
        self.total += 1
        result = await self._queue.send(delivery)
        if result.status == "queued" and result.durable:  # never claim what memory cannot keep
            result = TrackResult("queued", delivery.event)
        return result

    async def flush(self, timeout: float | None = None) -> None:
        """Wait for the in-memory queue to deliver what it holds."""
        if self._queue is not None:
            await self._queue.flush(timeout)

    async def aclose(self) -> None:
        """Deliver what the queue holds within ``shutdown_timeout``; report the outage."""
        if self.cause is not None and self.count:
            logger.error(
                "outbox %s was unavailable until shutdown (%s): %d events went to the "
                "in-memory queue, delivered now within %gs",
                self.description,
                self.cause,
                self.count,
                self.shutdown_timeout,
            )
        queue, self._queue = self._queue, None
        if queue is not None:
            await queue.aclose()
