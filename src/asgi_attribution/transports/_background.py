"""Background delivery: the handler enqueues and returns; workers make the attempts.

Guarantees, in plain words:
- ``send`` returns once the event is in the in-memory queue (``status="queued"``). One event loop
  owns the queue (the one it started in); a ``send`` from another loop or thread is handed to
  the owner thread-safely (or, if the owner does not take it within ``handoff_timeout``, sent
  inline on the caller's loop). Only after the owner loop ends does another take the jobs over.
- A full queue waits up to ``queue_full_timeout``, then drops the event with a warning,
  ``on_drop`` and ``status="dropped"`` (or raises :class:`QueueFullError`). Never silently.
- A fault of the whole integration (401, 403, a wrong path, a redirect) pauses delivery: events
  stay queued, one probe every ``pause_interval`` seconds, an ERROR at most once a minute.
- Every final failure is logged with the event id and passed to ``on_error``; every delivery
  to ``on_delivered``. ``mode="wait"`` events are sent inline (the handler gets the answer).
- ``aclose`` logs the ids not yet delivered (WARNING) first, then sends later events inline,
  delivers what is held within ``shutdown_timeout`` and reports the rest (ERROR, ``on_drop``).
- Every accepted event is one :class:`Job` in one :class:`Registry`, in one state at a time,
  until it is finished: sent, failed or dropped, each counted once.

The hand-off from another loop or thread: the caller schedules the work on the owner with
:func:`asyncio.run_coroutine_threadsafe` and awaits the answer; if the owner does not take it
within the timeout (blocked, or stopping), the caller withdraws it and does it itself. A
:class:`Ticket` makes sure exactly one of the two does.

Example:
    >>> from asgi_attribution import DUB, Delivery, LeadEvent
    >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
    >>> jobs = Registry()
    >>> job = Job(Delivery(lead, DUB))
    >>> jobs.put(job, JobState.QUEUED)
    >>> len(jobs), jobs.remove(job), jobs.remove(job)
    (1, True, False)
    >>> ticket = Ticket()
    >>> ticket.take(), ticket.withdraw()
    (True, False)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Literal, TypeVar

from .._events import Event, LeadEvent
from .._exceptions import DeliveryError, QueueFullError
from ._base import (
    Delivery,
    DeliveryStats,
    TrackResult,
    Transport,
    log_ids,
    next_retry,
    notify,
    report_undelivered,
)
from ._pause import Pause, is_integration_fault

__all__ = [
    "BackgroundTransport",
    "DeliveredCallback",
    "DropCallback",
    "ErrorCallback",
    "Job",
    "JobQueue",
    "JobState",
    "Registry",
    "Ticket",
    "alive",
    "hand_over",
    "notify",
    "on_owner",
    "run_on",
]


class JobState(enum.Enum):
    """Where an unfinished job is: waiting for a worker, being attempted, or backing off."""

    QUEUED = "queued"  # waiting for a worker
    ATTEMPTING = "attempting"  # a worker is making an attempt
    WAITING = "waiting"  # waiting out a backoff; its timer puts it back in QUEUED


class Job:
    """An accepted delivery and its progress (compared by identity)."""

    __slots__ = ("attempts", "delivery", "started", "state", "timer")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.state: JobState | None = None  # None: not (or no longer) in the registry
        self.attempts = 0
        self.started = time.monotonic()  # when its retry budget started
        self.timer: asyncio.TimerHandle | None = None  # the retry timer while WAITING

    @property
    def event_id(self) -> str:
        """The id of the job's event."""
        return self.delivery.event.event_id


class Registry:
    """Every accepted, unfinished job, by state: a job is in exactly one place, or none."""

    __slots__ = ("_by_state", "_size")

    def __init__(self) -> None:
        # Ordered sets: jobs leave each state in the order they entered it. OrderedDict, not
        # dict: a dict emptied from its front is scanned past every deleted slot by `first`.
        self._by_state: dict[JobState, OrderedDict[Job, None]] = {
            state: OrderedDict() for state in JobState
        }
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Job]:
        return iter([job for jobs in self._by_state.values() for job in jobs])

    def count(self, state: JobState) -> int:
        """How many jobs are in ``state``."""
        return len(self._by_state[state])

    def first(self, state: JobState) -> Job | None:
        """The job that entered ``state`` first, if any."""
        return next(iter(self._by_state[state]), None)

    def put(self, job: Job, state: JobState) -> None:
        """Add ``job`` in ``state``, or move it there from its current state."""
        if job.state is not None:
            del self._by_state[job.state][job]
        else:
            self._size += 1
        job.state = state
        self._by_state[state][job] = None
        if state is not JobState.WAITING and job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def remove(self, job: Job) -> bool:
        """Take ``job`` out; False if it was not in (already finished or reported)."""
        if job.state is None:
            return False
        del self._by_state[job.state][job]
        self._size -= 1
        job.state = None
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        return True


class JobQueue(Registry):
    """The registry of one owner loop, with the events its workers and callers wait on.

    ``ready``: a job is queued for the workers; ``room``: a worker took a job (for senders
    waiting on a full queue); ``idle``: no job is left (flush, aclose); ``stalled``: delivery
    paused (aclose stops waiting). :meth:`renew` makes them anew in a new owner loop.
    """

    __slots__ = ("idle", "ready", "room", "room_wanted", "stalled")

    def __init__(self) -> None:
        super().__init__()
        self.room_wanted = 0  # senders in wait_for_room: only they need ``room`` set
        self.renew()

    def renew(self) -> None:
        """Fresh events for the running loop, set as the jobs held now say."""
        self.ready, self.room = asyncio.Event(), asyncio.Event()
        self.idle, self.stalled = asyncio.Event(), asyncio.Event()
        if not self:
            self.idle.set()

    def add(self, job: Job, *, wake: bool = True) -> None:
        """Queue a new ``job``; wake a worker unless delivery is paused (``wake=False``)."""
        self.put(job, JobState.QUEUED)
        if self._size == 1:  # it was empty, the only time ``idle`` is set
            self.idle.clear()
        if wake:
            self.ready.set()

    def take(self, job: Job) -> None:
        """A worker takes ``job`` for an attempt."""
        self.put(job, JobState.ATTEMPTING)
        if self.room_wanted:
            self.room.set()

    def finish(self, job: Job) -> bool:
        """Take ``job`` out; True if this call did (so it is counted once)."""
        if not self.remove(job):
            return False
        if not self._size:  # the attribute, not len(): a Python call per event
            self.idle.set()
        return True

    def requeue(self, *states: JobState) -> int:
        """Jobs in ``states`` go back to the queue now (timers cancelled); returns how many."""
        moved = [job for job in self if job.state in states]
        for job in moved:
            self.put(job, JobState.QUEUED)
        return len(moved)

    async def wait_for_room(self, size: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for fewer than ``size`` queued jobs; False if not."""
        deadline = time.monotonic() + timeout
        self.room_wanted += 1
        try:
            while self.count(JobState.QUEUED) >= size:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.room.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.room.wait(), left)
            return True
        finally:
            self.room_wanted -= 1

    async def settled(self, timeout: float) -> None:
        """Wait until no job is left or delivery pauses, at most ``timeout`` seconds."""
        waits = {asyncio.ensure_future(event.wait()) for event in (self.idle, self.stalled)}
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waits:
                future.cancel()


T = TypeVar("T")

logger = logging.getLogger("asgi_attribution")


def alive(loop: asyncio.AbstractEventLoop | None) -> bool:
    """True while ``loop`` is running (and so owns what it started).

    Example:
        >>> loop = asyncio.new_event_loop()
        >>> alive(None), alive(loop)
        (False, False)
        >>> loop.close()
    """
    return loop is not None and loop.is_running() and not loop.is_closed()


class Ticket:
    """Work offered to the owner: either the owner takes it, or the caller withdraws it."""

    __slots__ = ("_lock", "_state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "offered"

    def take(self) -> bool:
        """For the owner: True if the work is now the owner's to do."""
        return self._settle("taken")

    def withdraw(self) -> bool:
        """For the caller: True if the owner never took it (the caller does it now)."""
        return self._settle("withdrawn")

    @property
    def taken(self) -> bool:
        """True once the owner took the work."""
        return self._state == "taken"

    def _settle(self, state: str) -> bool:
        with self._lock:
            if self._state != "offered":
                return False
            self._state = state
            return True


async def on_owner(
    owner: asyncio.AbstractEventLoop,
    work: Callable[[], Awaitable[T]],
    timeout: float,
) -> tuple[bool, T | None]:
    """Run ``work()`` on ``owner``; ``(True, result)``, or ``(False, None)`` if not taken.

    Not taken means: the owner did not start it within ``timeout`` seconds, closed, or ended
    before taking it; the caller must do it itself. ``(True, None)``: taken, but the owner's
    loop ended before it finished (the caller checks what became of it).

    Example:
        >>> async def main():
        ...     async def work():
        ...         return "done"
        ...     return await on_owner(asyncio.get_running_loop(), work, 1.0)
        >>> asyncio.run(main())
        (True, 'done')
    """
    ticket = Ticket()

    async def run() -> T | None:
        if not ticket.take():
            return None
        return await work()

    try:
        future: concurrent.futures.Future[T | None] = asyncio.run_coroutine_threadsafe(run(), owner)
    except RuntimeError:  # the owner closed in the meantime
        return False, None
    waiting = asyncio.wrap_future(future)
    try:
        return True, await asyncio.wait_for(asyncio.shield(waiting), timeout)
    except asyncio.TimeoutError:
        if ticket.withdraw():
            future.cancel()
            return False, None
    except asyncio.CancelledError:
        if not _owner_cancelled(future):
            raise
        return (False, None) if ticket.withdraw() or not ticket.taken else (True, None)
    # Taken, still running on the owner (waiting for room in a full queue, say): its answer.
    try:
        return True, await waiting
    except asyncio.CancelledError:
        if not _owner_cancelled(future):
            raise
        return True, None


def _owner_cancelled(future: concurrent.futures.Future[Any]) -> bool:
    """True if the work was cancelled on the owner's side (its loop ended), not ours."""
    if not future.cancelled():
        return False
    cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+
    return cancelling is None or cancelling() == 0


async def run_on(owner: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on the ``owner`` loop (another thread's) and await its result here.

    Example:
        >>> async def main():
        ...     return await run_on(asyncio.get_running_loop(), asyncio.sleep(0, "ok"))
        >>> asyncio.run(main())
        'ok'
    """
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, owner))


async def hand_over(
    owner: asyncio.AbstractEventLoop,
    accept: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    queued: Callable[[], T | None],
    inline: Callable[[], Awaitable[T]],
    take_over: Callable[[], Awaitable[T]],
    event: Event,
) -> T:
    """Hand an event to the owner loop; what to do when the owner does not take it.

    ``accept()`` runs on the owner, and its answer is returned. If the owner took the event but
    ended before answering, ``queued()`` answers if the event is held in the queue. Otherwise:
    if the owner still runs (it did not take the event within ``timeout``), ``inline()``
    delivers it on the caller's loop; if it has ended, ``take_over()`` (the caller's loop takes
    the queue over).

    Example:
        >>> from asgi_attribution import LeadEvent
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> async def main():
        ...     async def answer():
        ...         return "queued"
        ...     return await hand_over(asyncio.get_running_loop(), answer, timeout=1.0,
        ...         queued=lambda: None, inline=answer, take_over=answer, event=lead)
        >>> asyncio.run(main())
        'queued'
    """
    taken, result = await on_owner(owner, accept, timeout)
    if result is not None:
        return result
    held = queued() if taken else None
    if held is not None:
        return held
    if not alive(owner):
        return await take_over()
    logger.warning(
        "event %s: the event loop owning the queue did not take it within %gs: sent inline",
        event.event_id,
        timeout,
    )
    return await inline()


ErrorCallback = Callable[[Delivery, Exception], "Awaitable[None] | None"]

DropCallback = Callable[[Delivery, str], "Awaitable[None] | None"]

DeliveredCallback = Callable[[Delivery, TrackResult], "Awaitable[None] | None"]

Loop = asyncio.AbstractEventLoop


class BackgroundTransport(Transport):
    """Queue events in memory and deliver them through ``inner`` from worker tasks.

    Options: ``queue_size`` (events waiting for a worker), ``concurrency`` (attempts at once;
    an event waiting to retry holds no worker),
    ``when_full`` (``"drop"`` after waiting ``queue_full_timeout`` seconds, or ``"raise"``),
    ``shutdown_timeout`` (seconds ``aclose`` spends delivering what is queued),
    ``pause_interval`` (seconds between probes while an integration fault pauses delivery),
    ``handoff_timeout`` (seconds a send from another loop waits for the owner to take it),
    ``on_error(delivery, exc)``, ``on_drop(delivery, reason)`` and
    ``on_delivered(delivery, result)`` (sync or async callables; their errors are logged).
    Failed attempts are retried with ``inner.retry``. ``stats`` defaults to ``inner.stats``.

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
        >>> asyncio.run(signup()), len(memory.events), transport.stats.sent, transport.loop
        ('queued', 1, 1, None)
    """

    def __init__(
        self,
        inner: Transport,
        *,
        queue_size: int = 10_000,
        concurrency: int | None = None,
        when_full: Literal["drop", "raise"] = "drop",
        queue_full_timeout: float = 1.0,
        shutdown_timeout: float = 20.0,
        pause_interval: float = 30.0,
        handoff_timeout: float = 5.0,
        on_error: ErrorCallback | None = None,
        on_drop: DropCallback | None = None,
        on_delivered: DeliveredCallback | None = None,
        stats: DeliveryStats | None = None,
    ) -> None:
        concurrency = 10 if concurrency is None else concurrency
        if queue_size < 1 or concurrency < 1:
            raise ValueError(
                f"queue_size and concurrency must be at least 1, got {queue_size} and {concurrency}"
            )
        if when_full not in ("drop", "raise"):
            raise ValueError(f"when_full must be 'drop' or 'raise', got {when_full!r}")
        if not (pause_interval > 0 and handoff_timeout > 0):
            raise ValueError(
                "pause_interval and handoff_timeout must be > 0 seconds, "
                f"got {pause_interval!r} and {handoff_timeout!r}"
            )
        self.inner = inner
        self.retry, self.timeout = inner.retry, inner.timeout  # one attempt is inner's
        self.queue_size = queue_size
        self.concurrency = concurrency
        self.when_full = when_full
        self.queue_full_timeout = queue_full_timeout
        self.shutdown_timeout = shutdown_timeout
        self.handoff_timeout = handoff_timeout
        self.on_error, self.on_drop, self.on_delivered = on_error, on_drop, on_delivered
        self.pause_interval = pause_interval
        # One set of counters with inner (which counts retries inline and attempts).
        self.stats = stats if stats is not None else inner.stats
        self._jobs = JobQueue()
        self._pause = Pause(pause_interval)
        # The loop of the workers and retry timers: set in start(), never at import or fork.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def pending(self) -> int:
        """Events queued, being attempted, or waiting to retry (or held by a pause) right now."""
        return len(self._jobs)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop that owns the queue (the one it started in), or None when stopped."""
        return self._loop

    @property
    def paused(self) -> bool:
        """True while a fault of the whole integration holds delivery."""
        return self._pause.active

    def _foreign_owner(self, loop: Loop) -> Loop | None:
        """The owner loop if it is running and is not ``loop`` (the caller's), else None."""
        owner = self._loop
        if owner is not None and owner is not loop and alive(owner):
            return owner
        return None

    async def start(self) -> None:
        """Start the workers in the running loop (again after ``aclose``); idempotent.

        While another loop owns the queue and runs, this does nothing: that loop keeps it.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop or self._foreign_owner(loop) is not None:
            return  # running, or closing (then sends go inline until aclose has finished)
        self._take_over(loop)
        await self.inner.start()

    def _take_over(self, loop: asyncio.AbstractEventLoop) -> None:
        # Jobs of an ended loop were cut short mid-attempt or mid-backoff: queued again here.
        # Tasks and timers of the old loop find they no longer own anything and do nothing.
        self._jobs.requeue(JobState.ATTEMPTING, JobState.WAITING)
        carried = len(self._jobs)
        if carried:
            logger.warning("event loop changed: moving %d pending events over", carried)
        self._loop = loop
        self._closing = False
        self._jobs.renew()
        self._pause.probe = None  # a timer of the old loop
        if self._pause.active:
            self._pause.schedule(loop, 0.0, lambda: self._run_probe(loop))
            self._jobs.stalled.set()
        elif carried:
            self._jobs.ready.set()
        self._workers = [
            loop.create_task(self._work(loop), name=f"asgi-attribution-worker-{i}")
            for i in range(self.concurrency)
        ]

    # -- accepting ---------------------------------------------------------------------------

    async def send(self, delivery: Delivery) -> TrackResult:
        """Enqueue ``delivery`` (from another loop: through the owner); ``mode="wait"`` inline."""
        loop = asyncio.get_running_loop()  # asked once per event: it costs a getpid()
        owner = self._foreign_owner(loop)
        if owner is None:
            return await self._accept(delivery, loop)
        return await hand_over(
            owner,
            lambda: self._accept(delivery),
            timeout=self.handoff_timeout,
            queued=lambda: self._held(delivery),
            inline=lambda: self._send_inline(delivery),
            take_over=lambda: self._accept(delivery),
            event=delivery.event,
        )

    def _held(self, delivery: Delivery) -> TrackResult | None:
        held = any(job.delivery is delivery for job in self._jobs)
        return TrackResult("queued", delivery.event) if held else None

    async def _accept(self, delivery: Delivery, loop: Loop | None = None) -> TrackResult:
        event = delivery.event
        if (isinstance(event, LeadEvent) and event.mode == "wait") or self._closing:
            return await self._send_inline(delivery)
        if self._loop is not (asyncio.get_running_loop() if loop is None else loop):
            await self.start()
        full = self._jobs.count(JobState.QUEUED) >= self.queue_size  # a coroutine only if so
        if full and not await self._jobs.wait_for_room(self.queue_size, self.queue_full_timeout):
            return await self._full(delivery)
        self._jobs.add(Job(delivery), wake=not self._pause.active)
        self.stats.count("queued", delivery)
        return TrackResult("queued", event)

    async def _full(self, delivery: Delivery) -> TrackResult:
        event_id = delivery.event.event_id
        reason = f"queue full ({self.queue_size} events) for {self.queue_full_timeout:g}s"
        if self._pause.active:
            reason += f" while delivery is paused ({self._pause.describe()})"
        if self.when_full == "raise":
            raise QueueFullError(event_id, "queue_full", reason)
        # Dropping keeps the signup working; the loss is loud (warning, counter, callback).
        self.stats.count("dropped", delivery, reason="queue_full")
        logger.warning("event %s dropped: %s", event_id, reason)
        await notify(self.on_drop, delivery, reason)
        return TrackResult("dropped", delivery.event, reason="dropped: " + reason)

    async def _send_inline(self, delivery: Delivery) -> TrackResult:
        # The inline send of the contract, through this queue's attempt (the inner's) and the
        # inner's retry policy: it finishes the event, so it counts it in this queue's stats.
        return await Transport.send(self, delivery)

    async def attempt(self, delivery: Delivery) -> TrackResult:
        """One attempt straight through ``inner``, bypassing the queue."""
        return await self.inner.attempt(delivery)

    # -- delivering --------------------------------------------------------------------------

    async def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._loop is loop:
            job = None if self._pause.active else self._jobs.first(JobState.QUEUED)
            if job is not None:
                await self._attempt(job, loop)
                continue
            ready = self._jobs.ready
            ready.clear()
            await ready.wait()

    async def _attempt(self, job: Job, loop: asyncio.AbstractEventLoop) -> bool:
        """One attempt at ``job``; True unless it met a fault of the whole integration."""
        self._jobs.take(job)
        job.attempts += 1
        # Cancelled (shutdown, or the loop ending), the job stays in the registry: aclose
        # reports it, or a new loop queues it again.
        try:
            result = await self.inner.attempt(job.delivery)
        except Exception as exc:  # every failure is reported; the worker carries on
            if self._loop is not loop:
                return True
            if is_integration_fault(exc) and isinstance(exc, DeliveryError):
                self._hold(job, exc, loop)
                return False
            await self._failed(job, exc, loop)
            return True
        if self._loop is loop and self._jobs.finish(job):
            self.stats.delivered(job.delivery, result)
            if self.on_delivered is not None:
                await notify(self.on_delivered, job.delivery, result)
        return True

    async def _failed(self, job: Job, exc: Exception, loop: asyncio.AbstractEventLoop) -> None:
        delivery = job.delivery
        if isinstance(exc, DeliveryError):
            elapsed = time.monotonic() - job.started
            wait = next_retry(
                exc,
                self.inner.retry,
                attempts=job.attempts,
                elapsed=elapsed,
                stats=self.stats,
                provider=delivery.provider.name,
                event_kind=delivery.event.kind,
            )
            if wait is not None:
                self._jobs.put(job, JobState.WAITING)
                job.timer = loop.call_later(wait, self._retry_due, job, loop)
                return
        if not self._jobs.finish(job):
            return
        self.stats.count("failed", delivery, reason=getattr(exc, "code", None))
        logger.error("event %s failed: %s", delivery.event.event_id, exc)
        await notify(self.on_error, delivery, exc)

    def _retry_due(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop and job.state is JobState.WAITING:
            job.timer = None
            self._jobs.put(job, JobState.QUEUED)
            if not self._pause.active:
                self._jobs.ready.set()

    # -- pausing on faults of the whole integration ------------------------------------------

    def _hold(self, job: Job, cause: DeliveryError, loop: asyncio.AbstractEventLoop) -> None:
        """Keep ``job`` queued (the attempt does not count) and pause, or stay paused."""
        job.attempts -= 1
        self._jobs.put(job, JobState.QUEUED)
        if self._pause.begin(cause, len(self._jobs)):
            self.stats.count(
                "paused", job.delivery, status_code=cause.status_code, reason=cause.code
            )
            self._jobs.stalled.set()
        if self._pause.probe is None:
            self._pause.schedule(loop, self._pause.interval, lambda: self._run_probe(loop))

    async def _run_probe(self, loop: asyncio.AbstractEventLoop) -> None:
        """One attempt with the first queued event; resume unless the integration still fails."""
        if self._loop is not loop or not self._pause.active:
            return
        self._pause.probe = None
        job = self._jobs.first(JobState.QUEUED)
        if job is None:  # nothing to probe with right now: look again later
            self._pause.schedule(loop, self._pause.interval, lambda: self._run_probe(loop))
            return
        if await self._attempt(job, loop) and self._loop is loop:
            self._resume(job.delivery)

    def _resume(self, delivery: Delivery | None) -> None:
        lasted = self._pause.end(len(self._jobs))
        self.stats.count("resumed", delivery, duration=lasted)
        self._jobs.stalled.clear()
        for job in self._jobs:
            job.started = time.monotonic()  # the pause does not spend their retry budget
        self._jobs.ready.set()

    # -- flush and shutdown ------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until nothing is queued, in flight or waiting to retry (or ``timeout`` passes)."""
        owner = self._foreign_owner(asyncio.get_running_loop())
        if owner is not None:
            return await run_on(owner, self.flush(timeout))
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            await self.start()  # the owner ended: take its jobs over
        if self._loop is None or not self._jobs:
            return
        try:
            await asyncio.wait_for(self._jobs.idle.wait(), timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "flush timed out after %gs with %d events pending", timeout, self.pending
            )

    async def aclose(self) -> None:
        """Report what is undelivered, deliver it within ``shutdown_timeout``, report the rest."""
        owner = self._foreign_owner(asyncio.get_running_loop())
        if owner is not None:
            return await run_on(owner, self.aclose())
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            await self.start()
        if self._loop is None:
            await self.inner.aclose()
            return
        self._closing = True
        try:
            await self._drain()
        finally:
            self._closing = False

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        # Report first: a SIGKILL during the drain must find every id already in the log.
        waiting = [job.event_id for job in self._jobs]
        head = f"shutting down with {len(waiting)} events not yet delivered (draining up to"
        log_ids(logging.WARNING, f"{head} {self.shutdown_timeout:g}s)", waiting)
        # Events waiting out a backoff get one last attempt now rather than be dropped later.
        self._jobs.requeue(JobState.WAITING)
        if self._pause.active and self._jobs:  # one probe now: maybe the fault is over
            self._pause.cancel_probe()
            await self._run_probe(loop)
        if self._jobs and not self._pause.active:
            self._jobs.ready.set()
            await self._jobs.settled(self.shutdown_timeout)
        workers, self._workers, self._loop = self._workers, [], None
        self._pause.cancel_probe()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        undelivered = [job.delivery for job in self._jobs if self._jobs.finish(job)]
        reason = f"not delivered within shutdown_timeout={self.shutdown_timeout:g}s"
        if self._pause.active:
            reason = f"not delivered: delivery paused ({self._pause.describe()})"
            self._pause.end(0)
        await report_undelivered(undelivered, reason, self.stats, self.on_drop)
        await self.inner.aclose()
