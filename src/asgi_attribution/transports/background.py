"""Background delivery: the handler enqueues and returns; workers make the attempts.

Guarantees, in plain words:
- ``send`` returns as soon as the event is accepted in memory (``status="queued"``).
- A full queue waits up to ``queue_full_timeout`` for room, then drops the event with a warning
  and ``on_drop`` (or raises :class:`QueueFullError` with ``when_full="raise"``). Never silently.
- Every final failure (a 4xx, or retries exhausted) is logged with the event id and passed to
  ``on_error``.
- ``aclose`` stops taking new work into the queue (later events are sent inline), gives events
  waiting to retry a last attempt, delivers what is queued within ``shutdown_timeout``, and
  reports every event it could not deliver.
- Events with ``mode="wait"`` are sent inline, so the handler gets the provider's answer.

Every accepted event is one job in one registry, in one state at a time (queued, attempting,
waiting to retry) until it is finished: sent, failed or dropped, each counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal

from .._deprecation import renamed
from .._exceptions import DeliveryError, QueueFullError
from ..events import LeadEvent
from .base import Delivery, DeliveryStats, TrackResult, Transport
from .retry import next_retry

__all__ = ["BackgroundTransport", "DropCallback", "ErrorCallback", "notify"]

logger = logging.getLogger("asgi_attribution")

ErrorCallback = Callable[[Delivery, Exception], "Awaitable[None] | None"]
DropCallback = Callable[[Delivery, str], "Awaitable[None] | None"]


async def notify(callback: Callable[..., object] | None, *args: object) -> None:
    """Call a user's callback (sync or async); its failure is logged, never raised.

    Example:
        >>> import asyncio
        >>> asyncio.run(notify(print, "event evt_1", "dropped"))
        event evt_1 dropped
    """
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # a user's callback must not stop delivery
        logger.exception("delivery callback %r failed", callback)


class _State(enum.Enum):
    QUEUED = "queued"  # waiting for a worker
    ATTEMPTING = "attempting"  # a worker is making an attempt
    WAITING = "waiting"  # waiting out a backoff; its timer puts it back in QUEUED


class _Job:
    """An accepted delivery and its progress (compared by identity)."""

    __slots__ = ("attempts", "delivery", "started", "state", "timer")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.state: _State | None = None  # None: not (or no longer) in the registry
        self.attempts = 0
        self.started = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None  # the retry timer while WAITING


class _Registry:
    """Every accepted, unfinished job, by state: a job is in exactly one place, or none."""

    __slots__ = ("_by_state",)

    def __init__(self) -> None:
        # Dicts as ordered sets: jobs leave each state in the order they entered it.
        self._by_state: dict[_State, dict[_Job, None]] = {state: {} for state in _State}

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._by_state.values())

    def __iter__(self) -> Iterator[_Job]:
        return iter([job for jobs in self._by_state.values() for job in jobs])

    def count(self, state: _State) -> int:
        return len(self._by_state[state])

    def first(self, state: _State) -> _Job | None:
        return next(iter(self._by_state[state]), None)

    def put(self, job: _Job, state: _State) -> None:
        """Add ``job`` in ``state``, or move it there from its current state."""
        if job.state is not None:
            del self._by_state[job.state][job]
        job.state = state
        self._by_state[state][job] = None
        if state is not _State.WAITING and job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def remove(self, job: _Job) -> bool:
        """Take ``job`` out; False if it was not in (already finished or reported)."""
        if job.state is None:
            return False
        del self._by_state[job.state][job]
        job.state = None
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        return True


class BackgroundTransport(Transport):
    """Queue events in memory and deliver them through ``inner`` from worker tasks.

    Options: ``queue_size`` (events waiting for a worker), ``concurrency`` (attempts at once;
    an event waiting to retry holds no worker; ``workers`` is its deprecated name),
    ``when_full`` (``"drop"`` after waiting ``queue_full_timeout`` seconds, or ``"raise"``),
    ``shutdown_timeout`` (seconds ``aclose`` spends delivering what is queued),
    ``on_error(delivery, exc)`` and ``on_drop(delivery, reason)`` (sync or async callables).
    Failed attempts are retried with ``inner.retry``.

    Example:
        >>> import asyncio
        >>> memory = MemoryTransport()
        >>> transport = BackgroundTransport(memory, concurrency=20,
        ...                                 on_error=lambda d, exc: print(d.event.event_id, exc))
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> async def signup():
        ...     result = await transport.send(Delivery(lead, DUB))
        ...     await transport.aclose()  # delivers what is queued
        ...     return result.status
        >>> asyncio.run(signup()), len(memory.events), transport.stats.sent
        ('queued', 1, 1)
    """

    counts_outcomes = True

    def __init__(
        self,
        inner: Transport,
        *,
        queue_size: int = 10_000,
        concurrency: int | None = None,
        when_full: Literal["drop", "raise"] = "drop",
        queue_full_timeout: float = 1.0,
        shutdown_timeout: float = 20.0,
        on_error: ErrorCallback | None = None,
        on_drop: DropCallback | None = None,
        stats: DeliveryStats | None = None,
        workers: int | None = None,
    ) -> None:
        concurrency = renamed(
            "BackgroundTransport", "workers", workers, "concurrency", concurrency, 10
        )
        if queue_size < 1 or concurrency < 1:
            raise ValueError(
                f"queue_size and concurrency must be at least 1, got {queue_size} and {concurrency}"
            )
        if when_full not in ("drop", "raise"):
            raise ValueError(f"when_full must be 'drop' or 'raise', got {when_full!r}")
        self.inner = inner
        self.retry, self.timeout = inner.retry, inner.timeout  # one attempt is inner's
        self.queue_size = queue_size
        self.concurrency = concurrency
        self.when_full = when_full
        self.queue_full_timeout = queue_full_timeout
        self.shutdown_timeout = shutdown_timeout
        self.on_error = on_error
        self.on_drop = on_drop
        if stats is not None:
            self.stats = stats
        self._jobs = _Registry()
        # The loop that runs the workers and retry timers. Created in start(), inside the
        # running loop: nothing at import or fork time. Another loop that finds it ended (one
        # loop per test, asyncio.run per job) takes the unfinished jobs over.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()  # for the workers: a job is queued
        self._room = asyncio.Event()  # for senders waiting on a full queue: a job was taken
        self._idle = asyncio.Event()  # for flush and aclose: no job is left
        self._closing = False

    @property
    def pending(self) -> int:
        """Events queued, being attempted, or waiting to retry right now."""
        return len(self._jobs)

    async def start(self) -> None:
        """Start the workers in the running loop (again after ``aclose``); idempotent."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return  # running, or closing (then sends go inline until aclose has finished)
        self._take_over(loop)
        await self.inner.start()

    def _take_over(self, loop: asyncio.AbstractEventLoop) -> None:
        # Jobs of an ended loop were cut short mid-attempt or mid-backoff: queued again here.
        # Tasks and timers of the old loop find they no longer own anything and do nothing.
        carried = 0
        for job in self._jobs:
            if job.state is not _State.QUEUED:
                self._jobs.put(job, _State.QUEUED)
            carried += 1
        if carried:
            logger.warning("event loop changed: moving %d pending events over", carried)
        self._loop = loop
        self._closing = False
        self._ready, self._room, self._idle = asyncio.Event(), asyncio.Event(), asyncio.Event()
        if carried:
            self._ready.set()
        else:
            self._idle.set()
        self._workers = [
            loop.create_task(self._work(loop), name=f"asgi-attribution-worker-{i}")
            for i in range(self.concurrency)
        ]

    async def _adopt(self) -> asyncio.AbstractEventLoop | None:
        """The owning loop, after taking over an ended loop's jobs if it is another one."""
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            await self.start()
        return self._loop

    # -- accepting ---------------------------------------------------------------------------

    async def send(self, delivery: Delivery) -> TrackResult:
        """Enqueue ``delivery`` and return at once; ``mode="wait"`` events are sent inline."""
        event = delivery.event
        if (isinstance(event, LeadEvent) and event.mode == "wait") or self._closing:
            return await self._send_inline(delivery)
        if self._loop is not asyncio.get_running_loop():
            await self.start()
        if self._jobs.count(_State.QUEUED) >= self.queue_size and not await self._wait_for_room():
            return await self._full(delivery)
        self._jobs.put(_Job(delivery), _State.QUEUED)
        self.stats.queued += 1
        self._idle.clear()
        self._ready.set()
        return TrackResult("queued", event)

    async def _wait_for_room(self) -> bool:
        deadline = time.monotonic() + self.queue_full_timeout
        while self._jobs.count(_State.QUEUED) >= self.queue_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._room.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._room.wait(), left)
        return True

    async def _full(self, delivery: Delivery) -> TrackResult:
        event_id = delivery.event.event_id
        reason = f"queue full ({self.queue_size} events) for {self.queue_full_timeout:g}s"
        if self.when_full == "raise":
            raise QueueFullError(event_id, "queue_full", reason)
        # Dropping keeps the signup working; the loss is loud (warning, counter, callback).
        self.stats.dropped += 1
        logger.warning("event %s dropped: %s", event_id, reason)
        await notify(self.on_drop, delivery, reason)
        return TrackResult("skipped", delivery.event, reason="dropped: " + reason)

    async def _send_inline(self, delivery: Delivery) -> TrackResult:
        try:
            result = await self.inner.send(delivery)
        except Exception:
            self.stats.failed += 1
            raise
        self.stats.sent += 1
        return result

    async def attempt(self, delivery: Delivery) -> TrackResult:
        """One attempt straight through ``inner``, bypassing the queue."""
        return await self.inner.attempt(delivery)

    # -- delivering --------------------------------------------------------------------------

    async def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._loop is loop:
            job = self._jobs.first(_State.QUEUED)
            if job is None:
                ready = self._ready
                ready.clear()
                await ready.wait()
                continue
            self._jobs.put(job, _State.ATTEMPTING)
            self._room.set()
            job.attempts += 1
            # Cancelled (shutdown, or the loop ending), the job stays in the registry: aclose
            # reports it, or a new loop queues it again.
            try:
                await self.inner.attempt(job.delivery)
            except Exception as exc:  # every failure is reported; the worker carries on
                if self._loop is loop:
                    await self._failed(job, exc, loop)
            else:
                if self._loop is loop and self._finish(job):
                    self.stats.sent += 1

    async def _failed(self, job: _Job, exc: Exception, loop: asyncio.AbstractEventLoop) -> None:
        if isinstance(exc, DeliveryError):
            elapsed = time.monotonic() - job.started
            wait = next_retry(
                exc, self.inner.retry, attempts=job.attempts, elapsed=elapsed, stats=self.stats
            )
            if wait is not None:
                self._jobs.put(job, _State.WAITING)
                job.timer = loop.call_later(wait, self._retry_due, job, loop)
                return
        if not self._finish(job):
            return
        self.stats.failed += 1
        logger.error("event %s failed: %s", job.delivery.event.event_id, exc)
        await notify(self.on_error, job.delivery, exc)

    def _retry_due(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop and job.state is _State.WAITING:
            job.timer = None
            self._jobs.put(job, _State.QUEUED)
            self._ready.set()

    def _finish(self, job: _Job) -> bool:
        """Take a job out of the registry; True if this call did (so it is counted once)."""
        if not self._jobs.remove(job):
            return False
        if not self._jobs:
            self._idle.set()
        return True

    # -- flush and shutdown ------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until nothing is queued, in flight or waiting to retry (or ``timeout`` passes)."""
        if await self._adopt() is None or not self._jobs:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "flush timed out after %gs with %d events pending", timeout, self.pending
            )

    async def aclose(self) -> None:
        """Stop queueing, deliver what is queued within ``shutdown_timeout``, report the rest."""
        if await self._adopt() is None:
            await self.inner.aclose()
            return
        self._closing = True
        try:
            # Events waiting out a backoff get one last attempt now rather than be dropped later.
            for job in self._jobs:
                if job.state is _State.WAITING:
                    self._jobs.put(job, _State.QUEUED)
                    self._ready.set()
            if self._jobs:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self.shutdown_timeout)
            workers, self._workers, self._loop = self._workers, [], None
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            undelivered = [job.delivery for job in self._jobs if self._finish(job)]
            if undelivered:
                await self._report_undelivered(undelivered)
            await self.inner.aclose()
        finally:
            self._closing = False

    async def _report_undelivered(self, undelivered: list[Delivery]) -> None:
        reason = f"not delivered within shutdown_timeout={self.shutdown_timeout:g}s"
        logger.error(
            "%d events %s: %s",
            len(undelivered),
            reason,
            ", ".join(d.event.event_id for d in undelivered),
        )
        for delivery in undelivered:
            self.stats.dropped += 1
            await notify(self.on_drop, delivery, reason)
