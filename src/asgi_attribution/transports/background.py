"""Background delivery: the handler enqueues and returns; workers deliver with bounded concurrency.

Guarantees, in plain words:
- ``send`` returns as soon as the event is in the in-memory queue (``status="queued"``).
- A full queue waits up to ``queue_full_timeout`` for room, then drops the event with a warning
  and ``on_drop`` (or raises :class:`QueueFullError` with ``when_full="raise"``). Never silently.
- Every final failure (a 4xx, or retries exhausted) is logged with the event id and passed to
  ``on_error``.
- ``aclose`` stops taking new work into the queue (later events are sent inline), delivers what is
  queued within ``shutdown_timeout``, and reports every event it could not deliver.
- Events with ``mode="wait"`` are sent inline, so the handler gets the provider's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from .._exceptions import QueueFullError
from ..events import DeliveryError, LeadEvent
from .base import Delivery, DeliveryStats, TrackResult, Transport
from .http import HTTPTransport, log_retry

__all__ = ["BackgroundTransport", "QueueFullError"]

logger = logging.getLogger("asgi_attribution")

ErrorCallback = Callable[[Delivery, Exception], "Awaitable[None] | None"]
DropCallback = Callable[[Delivery, str], "Awaitable[None] | None"]


async def _call(callback: Callable[..., object] | None, *args: object) -> None:
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # a user's callback must not stop delivery
        logger.exception("delivery callback %r failed", callback)


class BackgroundTransport(Transport):
    """Queue events in memory and deliver them through ``inner`` from worker tasks.

    Options: ``queue_size`` (bound of the queue), ``workers`` (deliveries at once; over HTTP an
    event waiting to retry does not hold a worker), ``when_full``
    (``"drop"`` after waiting ``queue_full_timeout`` seconds, or ``"raise"``), ``shutdown_timeout``
    (seconds ``aclose`` spends delivering what is queued), ``on_error(delivery, exc)`` and
    ``on_drop(delivery, reason)`` (sync or async callables).

    Example:
        >>> transport = BackgroundTransport(HTTPTransport(api_key="dub_xxx"), workers=20,
        ...                                 on_error=lambda d, exc: print(d.event.event_id, exc))
    """

    counts_outcomes = True

    def __init__(
        self,
        inner: Transport,
        *,
        queue_size: int = 10_000,
        workers: int = 10,
        when_full: Literal["drop", "raise"] = "drop",
        queue_full_timeout: float = 1.0,
        shutdown_timeout: float = 20.0,
        on_error: ErrorCallback | None = None,
        on_drop: DropCallback | None = None,
        stats: DeliveryStats | None = None,
    ) -> None:
        if queue_size < 1 or workers < 1:
            raise ValueError(
                f"queue_size and workers must be at least 1, got {queue_size} and {workers}"
            )
        if when_full not in ("drop", "raise"):
            raise ValueError(f"when_full must be 'drop' or 'raise', got {when_full!r}")
        self.inner = inner
        self.queue_size = queue_size
        self.workers = workers
        self.when_full = when_full
        self.queue_full_timeout = queue_full_timeout
        self.shutdown_timeout = shutdown_timeout
        self.on_error = on_error
        self.on_drop = on_drop
        self.stats = stats if stats is not None else DeliveryStats()
        # Over HTTP the workers make one attempt at a time and schedule retries themselves, so an
        # event waiting out its backoff holds no worker; other transports retry on their own.
        self._attempting = inner if isinstance(inner, HTTPTransport) else None
        # Created in start(), inside the running loop: nothing at import or fork time.
        self._queue: asyncio.Queue[_Job] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._inflight: set[_Job] = set()
        self._waiting: dict[asyncio.Task[None], _Job] = {}
        # Jobs whose worker or retry timer was cancelled because their event loop ended
        # (asyncio.run per job, one loop per test): the next start() takes them over.
        self._orphans: list[_Job] = []
        self._closing = False

    @property
    def pending(self) -> int:
        """Events queued, being delivered, or waiting to retry right now."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return queued + len(self._inflight) + len(self._waiting)

    async def start(self) -> None:
        """Start the workers in the running loop (again after ``aclose``)."""
        loop = asyncio.get_running_loop()
        if self._queue is not None and self._loop is loop:
            return  # running, or closing (then sends go inline until aclose has finished)
        leftover = self._take_leftovers(loop)
        self._loop = loop
        self._closing = False
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        for job in leftover:
            self._queue.put_nowait(job)
        await self.inner.start()
        self._workers = [
            loop.create_task(self._work(), name=f"asgi-attribution-worker-{i}")
            for i in range(self.workers)
        ]

    def _take_leftovers(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        # Used from a new event loop without a clean shutdown (e.g. one loop per test): carry
        # the old queue's events over instead of stranding them in a dead loop.
        if self._queue is None or self._loop is loop:
            return []
        leftover = [*self._orphans, *self._inflight, *self._waiting.values()]
        self._orphans.clear()
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
        self._inflight.clear()
        self._waiting.clear()
        if leftover:
            logger.warning("event loop changed: moving %d pending events over", len(leftover))
        return leftover

    async def send(self, delivery: Delivery) -> TrackResult:
        """Enqueue ``delivery`` and return at once; ``mode="wait"`` events are sent inline."""
        event = delivery.event
        if (isinstance(event, LeadEvent) and event.mode == "wait") or self._closing:
            return await self._send_inline(delivery)
        if self._queue is None or self._loop is not asyncio.get_running_loop():
            await self.start()
        assert self._queue is not None
        job = _Job(delivery)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(self._queue.put(job), self.queue_full_timeout)
            except asyncio.TimeoutError:
                return await self._full(delivery)
        self.stats.queued += 1
        return TrackResult("queued", event)

    async def _full(self, delivery: Delivery) -> TrackResult:
        event_id = delivery.event.event_id
        reason = f"queue full ({self.queue_size} events) for {self.queue_full_timeout:g}s"
        if self.when_full == "raise":
            raise QueueFullError(event_id, "queue_full", reason)
        # Dropping keeps the signup working; the loss is loud (warning, counter, callback).
        self.stats.dropped += 1
        logger.warning("event %s dropped: %s", event_id, reason)
        await _call(self.on_drop, delivery, reason)
        return TrackResult("skipped", delivery.event, reason="dropped: " + reason)

    async def _send_inline(self, delivery: Delivery) -> TrackResult:
        try:
            result = await self.inner.send(delivery)
        except Exception:
            self.stats.failed += 1
            raise
        self.stats.sent += 1
        return result

    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            job = await queue.get()
            self._inflight.add(job)
            retrying = False
            try:
                retrying = await self._deliver(job, queue)
            except asyncio.CancelledError:
                if not self._closing:  # the loop is ending, not us: keep the job
                    self._orphans.append(job)
                raise
            finally:
                self._inflight.discard(job)
                # A job waiting to retry stays unfinished, so flush() and aclose() wait for it.
                if not retrying:
                    queue.task_done()

    async def _deliver(self, job: _Job, queue: asyncio.Queue[_Job]) -> bool:
        """Try ``job`` once (or through the inner transport's own retries).

        Returns True when a retry was scheduled.
        """
        delivery, attempting = job.delivery, self._attempting
        try:
            if attempting is None:
                await self.inner.send(delivery)
            else:
                job.attempts += 1
                await attempting.attempt(delivery)
        except asyncio.CancelledError:
            raise  # reported by aclose
        except Exception as exc:  # every failure is reported; the worker carries on
            if attempting is not None and isinstance(exc, DeliveryError) and exc.retryable:
                elapsed = time.monotonic() - job.started
                wait = attempting.retry.next_wait(job.attempts, elapsed, exc.retry_after)
                if wait is not None:
                    self.stats.retried += 1
                    log_retry(exc, job.attempts, wait)
                    task = asyncio.get_running_loop().create_task(self._requeue(job, wait, queue))
                    self._waiting[task] = job
                    task.add_done_callback(self._forget)
                    return True
                exc.gave_up(job.attempts, elapsed)
            self.stats.failed += 1
            logger.error("event %s failed: %s", delivery.event.event_id, exc)
            await _call(self.on_error, delivery, exc)
        else:
            self.stats.sent += 1
        return False

    async def _requeue(self, job: _Job, wait: float, queue: asyncio.Queue[_Job]) -> None:
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            if not self._closing:  # the loop is ending, not us: keep the job
                self._orphans.append(job)
            raise
        await queue.put(job)
        queue.task_done()  # for the attempt that scheduled this retry

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._waiting.pop(task, None)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until nothing is queued, in flight or waiting to retry (or ``timeout`` passes)."""
        queue = await self._adopt()
        if queue is None:
            return
        try:
            await asyncio.wait_for(queue.join(), timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "flush timed out after %gs with %d events pending", timeout, self.pending
            )

    async def _adopt(self) -> asyncio.Queue[_Job] | None:
        """The queue in this loop, if any, after taking over an ended loop's events."""
        if self._queue is not None and self._loop is not asyncio.get_running_loop():
            await self.start()
        return self._queue

    async def aclose(self) -> None:
        """Stop queueing, deliver what is queued within ``shutdown_timeout``, report the rest."""
        queue = await self._adopt()
        if queue is None:
            await self.inner.aclose()
            return
        self._closing = True
        # Events waiting out a backoff get one last attempt now rather than be dropped later.
        for task, job in list(self._waiting.items()):
            try:
                queue.put_nowait(job)
            except asyncio.QueueFull:
                continue
            task.cancel()
            del self._waiting[task]
            queue.task_done()  # for the attempt that scheduled the cancelled retry
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(queue.join(), self.shutdown_timeout)
        undelivered = [job.delivery for job in (*self._inflight, *self._waiting.values())]
        while not queue.empty():
            undelivered.append(queue.get_nowait().delivery)
        tasks = [*self._workers, *self._waiting]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []
        self._inflight.clear()
        self._waiting.clear()
        self._queue = None
        if undelivered:
            reason = f"not delivered within shutdown_timeout={self.shutdown_timeout:g}s"
            logger.error(
                "%d events %s: %s",
                len(undelivered),
                reason,
                ", ".join(d.event.event_id for d in undelivered),
            )
            for delivery in undelivered:
                self.stats.dropped += 1
                await _call(self.on_drop, delivery, reason)
        await self.inner.aclose()
        self._closing = False


class _Job:
    """A queued delivery and its retry state (compared by identity)."""

    __slots__ = ("attempts", "delivery", "started")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.attempts = 0
        self.started = time.monotonic()
