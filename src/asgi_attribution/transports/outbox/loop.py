"""The outbox's delivery loop: claim due rows, one attempt each, record what happened.

Each claimed row gets one attempt through the inner transport. Then, in the store's clock:
delivered (with the provider's outcome), due again later (the one retry step, counting
attempts and elapsed store time), or a dead letter. A fault of the whole integration pauses
claiming (:mod:`.pause`) instead of spending any event's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..._exceptions import AttributionError, DeliveryError
from ...providers import Provider
from ..background import notify
from ..base import Delivery, DeliveryStats, TrackResult, Transport
from ..retry import next_retry
from .pause import OutboxPause, is_integration_fault
from .rows import OutboxRow
from .store import OutboxStore

__all__ = ["DeliveredCallback", "DeliveryLoop"]

logger = logging.getLogger("asgi_attribution")

#: ``on_delivered(delivery, result)``: called (sync or async) for each event the provider took.
DeliveredCallback = Callable[[Delivery, TrackResult], Any]


def describe(error: Exception) -> str:
    """An error in a few words: ``HTTP 401 unauthorized: bad key``.

    Example:
        >>> describe(DeliveryError("evt_1", "unauthorized", "bad key", status_code=401))
        'HTTP 401 unauthorized: bad key'
    """
    if isinstance(error, DeliveryError):
        status = f"HTTP {error.status_code} " if error.status_code is not None else ""
        return f"{status}{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


class DeliveryLoop:
    """The claim-attempt-record loop of one :class:`OutboxTransport` in one event loop.

    Built and started by the transport (see its options); holds the tasks of the attempts
    in flight so that shutdown can let them finish.
    """

    def __init__(
        self,
        store: OutboxStore,
        inner: Transport,
        stats: DeliveryStats,
        provider: Callable[[str], Provider],
        pause: OutboxPause,
        *,
        concurrency: int,
        lease: float,
        poll_interval: float,
        maintenance_interval: float,
        on_error: Callable[..., Any] | None,
        on_delivered: DeliveredCallback | None,
    ) -> None:
        self.store, self.inner, self.stats, self.pause = store, inner, stats, pause
        self._provider = provider
        self.concurrency, self.lease, self.poll_interval = concurrency, lease, poll_interval
        self.maintenance_interval = maintenance_interval
        self.on_error, self.on_delivered = on_error, on_delivered
        self.tasks: dict[asyncio.Task[None], OutboxRow] = {}
        self.stopping = False
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._next_maintenance = 0.0
        self._runner = self._loop.create_task(self._run(), name="asgi-attribution-outbox")

    def wake(self) -> None:
        """Look for due rows now (a new event was stored)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self.stopping:
            self._wake.clear()
            await self._maintain()
            probing = self.pause.active
            if probing and (self.tasks or not self.pause.probe_due()):
                await self._sleep(min(self.pause.wait(), self.poll_interval))
                continue
            free = 1 if probing else self.concurrency - len(self.tasks)
            rows: list[OutboxRow] = []
            if free > 0:
                try:
                    rows = await self.store.claim(free, self.lease)
                except Exception as exc:  # a locked or unreachable store: try again later
                    logger.warning("outbox %s: claim failed: %s", self.store.description, exc)
                if self.stopping:  # shutdown began during the claim: give the rows back
                    await self.record(self.store.release, rows)
                    return
                for row in rows:
                    task = self._loop.create_task(self._deliver(row))
                    self.tasks[task] = row
                    task.add_done_callback(self._done)
            if free > 0 and len(rows) == free and not probing:
                continue  # there may be more due right now
            await self._sleep(self.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self.maintenance_interval
        try:
            await self.store.maintain()
        except Exception as exc:
            logger.warning("outbox %s: maintenance failed: %s", self.store.description, exc)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        self._wake.set()

    async def _deliver(self, row: OutboxRow) -> None:
        limit = self.inner.retry.max_attempts
        if row.attempts > limit:
            # Claimed again and again without an outcome: each attempt killed its worker (or
            # stalled past the lease). Stop here rather than take down every worker in turn.
            error = f"claimed {row.attempts} times without an outcome (limit {limit})"
            await self.record(self.store.dead, replace(row, error_code="no_outcome"), error)
            self.stats.failed += 1
            logger.error("event %s is a dead letter: %s", row.event_id, error)
            return
        try:
            delivery = Delivery(row.to_event(), self._provider(row.provider))
        except Exception as exc:  # the row no longer makes an event: retrying cannot help
            await self.record(self.store.dead, row, f"cannot restore event: {exc}")
            self.stats.failed += 1
            logger.error("event %s is a dead letter: cannot restore it: %s", row.event_id, exc)
            return
        try:
            # One attempt per claim: the store, not a sleeping task, holds the retry.
            result = await self.inner.attempt(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_integration_fault(exc):
                await self._paused(row, exc)
            else:
                await self._failed(row, delivery, exc)
            return
        outcome = getattr(result, "outcome", None)
        reason = getattr(result, "outcome_reason", None)
        await self.record(
            self.store.delivered, replace(row, outcome=outcome, outcome_reason=reason)
        )
        count = getattr(self.stats, "delivered", None)
        if callable(count):
            count(delivery, result)
        else:
            self.stats.sent += 1
        if self.pause.active:
            self.pause.end(await self._held())
        await notify(self.on_delivered, delivery, result)

    async def _held(self) -> int:
        try:
            return await self.store.unfinished()
        except Exception:
            return -1

    async def _paused(self, row: OutboxRow, exc: Exception) -> None:
        # Not the event's fault: it goes back as it was (this attempt not counted).
        await self.record(self.store.release, [row])
        if not self.pause.active:
            count = getattr(self.stats, "count", None)
            if callable(count):
                with contextlib.suppress(Exception):
                    count("paused", reason=getattr(exc, "code", None))
        self.pause.begin(describe(exc), await self._held())

    async def _failed(self, row: OutboxRow, delivery: Delivery, exc: Exception) -> None:
        if not isinstance(exc, DeliveryError):
            # Our own validation errors are final; anything else may be a passing fault.
            retryable = not isinstance(exc, AttributionError)
            exc = DeliveryError(
                row.event_id, type(exc).__name__, str(exc) or "error", retryable=retryable
            )
        now = self.store.now()
        elapsed = max(0.0, now - (row.first_attempt_at or now))
        wait = next_retry(
            exc, self.inner.retry, attempts=row.attempts, elapsed=elapsed, stats=self.stats
        )
        row = replace(row, error_code=exc.code)
        if wait is not None:
            await self.record(self.store.retry_later, row, now + wait, str(exc))
            if wait < self.poll_interval:
                # Due before the next poll: look again then, not a whole poll interval later.
                self._loop.call_later(wait, self._wake.set)
            return
        self.stats.failed += 1
        logger.error("event %s is a dead letter: %s", row.event_id, exc)
        await self.record(self.store.dead, row, str(exc))
        await notify(self.on_error, delivery, exc)

    async def record(self, method: Any, *args: Any) -> None:
        """Call a store method that records an outcome; a failure is logged, not raised.

        Tried twice (a pooled connection that died with a restarted server fails once): each
        of these calls only records if this worker still holds the claim, so a repeat is safe.
        """
        for attempt in (1, 2):
            try:
                await method(*args)
                return
            except Exception as exc:
                if attempt == 1:
                    await asyncio.sleep(0.05)
                    continue
                # The claim's lease runs out and another attempt follows: at-least-once.
                logger.warning(
                    "outbox %s: could not record an outcome: %s", self.store.description, exc
                )

    async def stop(self, grace: float) -> None:
        """Stop claiming; let attempts on the wire finish within ``grace``; release the rest."""
        # Not a plain cancel: a claim cancelled mid-way still commits in the store, and its
        # rows would wait for their lease to expire. The runner stops between claims.
        self.stopping = True
        self._wake.set()
        _, pending = await asyncio.wait([self._runner], timeout=60)
        for task in pending:
            task.cancel()
        await asyncio.gather(self._runner, return_exceptions=True)
        tasks = dict(self.tasks)
        if tasks:
            # Attempts already on the wire finish and record their outcome (each is one HTTP
            # attempt, bounded by its timeout): cancelled mid-flight, the next worker would
            # send them again.
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        unfinished = [row for task, row in tasks.items() if task.cancelled()]
        if unfinished:
            await self.record(self.store.release, unfinished)
