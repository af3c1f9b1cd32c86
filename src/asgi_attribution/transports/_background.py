"""Background delivery: the handler enqueues and returns; workers make the attempts.

Guarantees, in plain words:
- ``send`` returns once the event is in the in-memory queue (``status="queued"``). One event loop
  owns the queue (the one it started in) and is the only one that may call it: the
  :class:`~asgi_attribution.Tracker` hands events from other loops and threads to it. Only
  after the owner loop ends does another take the jobs over.
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
- Causal order (:attr:`Delivery.order`): an event accepted while an event holding its wait key
  is unfinished (queued, in flight, waiting to retry, held by a pause, or itself held) is
  ``HELD`` until that one is finished, however it ends: a customer's sale or customer update
  after that customer's lead, a refund after the sale with its invoice id (so after that
  sale's lead too). Other customers' and invoices' events go at full concurrency. A lead
  without ``mode`` goes with ``mode="wait"`` (:meth:`Delivery.from_queue`).

Example:
    >>> from asgi_attribution import DUB, Delivery, LeadEvent
    >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
    >>> jobs = Registry()
    >>> job = Job(Delivery(lead, DUB))
    >>> jobs.put(job, JobState.QUEUED)
    >>> len(jobs), jobs.remove(job), jobs.remove(job)
    (1, True, False)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Literal

from .._events import LeadEvent
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
    "notify",
]


# An order key with its provider: (provider, key space, value), as Delivery.order gives it.
_Key = tuple[str, str, str]


class JobState(enum.Enum):
    """Where an unfinished job is: waiting for a worker, being attempted, or backing off."""

    QUEUED = "queued"  # waiting for a worker
    ATTEMPTING = "attempting"  # a worker is making an attempt
    WAITING = "waiting"  # waiting out a backoff; its timer puts it back in QUEUED
    HELD = "held"  # after an unfinished holder of its wait key; queued once that one ends


class Job:
    """An accepted delivery and its progress (compared by identity)."""

    __slots__ = ("attempts", "delivery", "holds", "seq", "started", "state", "timer", "waits")

    _order = itertools.count()

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.waits, self.holds = delivery.order  # its order keys, or None
        self.seq = next(Job._order)  # acceptance order, across queues: only compared
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

    __slots__ = ("_held", "_holders", "idle", "ready", "room", "room_wanted", "stalled")

    def __init__(self) -> None:
        super().__init__()
        self.room_wanted = 0  # senders in wait_for_room: only they need ``room`` set
        # Per order key: its unfinished holders (in acceptance order) and the jobs held after them.
        self._holders: dict[_Key, OrderedDict[Job, None]] = {}
        self._held: dict[_Key, list[Job]] = {}
        self.renew()

    def waiting(self) -> int:
        """Jobs not yet taken by a worker: queued, or held after an event they wait on."""
        return self.count(JobState.QUEUED) + self.count(JobState.HELD)

    def renew(self) -> None:
        """Fresh events for the running loop, set as the jobs held now say."""
        self.ready, self.room = asyncio.Event(), asyncio.Event()
        self.idle, self.stalled = asyncio.Event(), asyncio.Event()
        if not self:
            self.idle.set()

    def add(self, job: Job, *, wake: bool = True) -> None:
        """Queue a new ``job``; wake a worker unless delivery is paused (``wake=False``).

        A job whose wait key an unfinished job holds (accepted before it, as every holder here
        was) is held until that holder is finished.
        """
        if job.holds is not None:
            self._holders.setdefault(job.holds, OrderedDict())[job] = None
        if job.waits is not None and job.waits in self._holders:
            self.put(job, JobState.HELD)
            self._held.setdefault(job.waits, []).append(job)
            if self._size == 1:
                self.idle.clear()
            return
        self.put(job, JobState.QUEUED)
        if self._size == 1:  # it was empty, the only time ``idle`` is set
            self.idle.clear()
        if wake:
            self.ready.set()

    def _release(self, holder: Job) -> None:
        """``holder`` is finished: queue the jobs waiting on its key no earlier holder holds."""
        key = holder.holds
        assert key is not None
        holders = self._holders.get(key)
        if holders is None or holder not in holders:
            return
        del holders[holder]
        first = next(iter(holders), None)
        if first is None:
            del self._holders[key]
        held = self._held.get(key)
        if not held:
            return
        if first is None:
            free, kept = held, []
        else:
            free = [job for job in held if job.seq < first.seq]
            kept = [job for job in held if job.seq > first.seq]
        if not free:
            return
        if kept:
            self._held[key] = kept
        else:
            del self._held[key]
        for job in free:
            if job.state is JobState.HELD:
                self.put(job, JobState.QUEUED)
        self.ready.set()  # a paused queue's workers look, see the pause and wait again

    def take(self, job: Job) -> None:
        """A worker takes ``job`` for an attempt."""
        self.put(job, JobState.ATTEMPTING)
        if self.room_wanted:
            self.room.set()

    def finish(self, job: Job) -> bool:
        """Take ``job`` out; True if this call did (so it is counted once)."""
        if not self.remove(job):
            return False
        if job.holds is not None:
            self._release(job)
        if job.waits is not None and job.waits in self._held:
            held = self._held[job.waits]  # a held job reported at shutdown
            if job in held:
                held.remove(job)
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
        """Wait up to ``timeout`` seconds for fewer than ``size`` waiting jobs; False if not."""
        deadline = time.monotonic() + timeout
        self.room_wanted += 1
        try:
            while self.waiting() >= size:
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


logger = logging.getLogger("asgi_attribution")

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
        if not pause_interval > 0:
            raise ValueError(f"pause_interval must be > 0 seconds, got {pause_interval!r}")
        self.inner = inner
        self.retry, self.timeout = inner.retry, inner.timeout  # one attempt is inner's
        self.queue_size = queue_size
        self.concurrency = concurrency
        self.when_full = when_full
        self.queue_full_timeout = queue_full_timeout
        self.shutdown_timeout = shutdown_timeout
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

    def _check_loop(self, loop: Loop) -> None:
        """One loop owns the queue: a call from another while it runs is a bug of the caller."""
        owner = self._loop
        if owner is not None and owner is not loop and owner.is_running():
            raise RuntimeError(
                "BackgroundTransport belongs to the event loop it started in, which still runs: "
                "hand events to it through a Tracker (which owns that loop), not directly"
            )

    async def start(self) -> None:
        """Start the workers in the running loop (again after ``aclose``); idempotent.

        A queue whose loop ended without ``aclose`` is taken over by the running loop.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return  # running, or closing (then sends go inline until aclose has finished)
        self._check_loop(loop)
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
        self._workers = []
        self._hire(loop)

    def _hire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Workers on ``loop`` up to ``concurrency`` (those that ended are replaced)."""
        self._workers = [task for task in self._workers if not task.done()]
        self._workers += [
            loop.create_task(self._work(loop), name=f"asgi-attribution-worker-{i}")
            for i in range(len(self._workers), self.concurrency)
        ]

    # -- accepting ---------------------------------------------------------------------------

    async def send(self, delivery: Delivery) -> TrackResult:
        """Enqueue ``delivery`` on the queue's loop; ``mode="wait"`` (or while closing) inline."""
        return await self._accept(delivery)

    async def _accept(self, delivery: Delivery) -> TrackResult:
        event = delivery.event
        if (isinstance(event, LeadEvent) and event.mode == "wait") or self._closing:
            return await self._send_inline(delivery)
        if self._loop is not asyncio.get_running_loop():  # asked once per event: a getpid()
            await self.start()
        full = self._jobs.waiting() >= self.queue_size  # a coroutine only if so
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

    def as_returned(self, result: TrackResult, *, started: bool) -> TrackResult:
        """``queued`` while started, as :meth:`send` answers (a ``mode="wait"`` lead: as is).

        Example:
            >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
            >>> queue = BackgroundTransport(MemoryTransport())
            >>> queue.as_returned(TrackResult("sent", lead), started=True).status
            'queued'
        """
        event = result.event
        if not started or (isinstance(event, LeadEvent) and event.mode == "wait"):
            return result
        return replace(result, status="queued", status_code=None, response=None)

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
        if job.attempts == 1:
            # A lead without mode goes with mode="wait" (a model copy): made here, by the
            # worker, off the handler's path.
            job.delivery = job.delivery.from_queue()
        # Cancelled (shutdown, or the loop ending), the job stays in the registry: aclose
        # reports it, or a new loop queues it again.
        try:
            result = await self.inner.attempt(job.delivery)
        except Exception as exc:  # every failure is reported; the worker carries on
            if self._loop is not loop:
                return True
            if is_integration_fault(exc) and isinstance(exc, DeliveryError):
                struck = self._pause.strike(job.event_id, exc)  # held again and again: failed
                if struck is None:
                    self._hold(job, exc, loop)
                    return False
                exc = struck
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
        self._check_loop(asyncio.get_running_loop())
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
        self._check_loop(asyncio.get_running_loop())
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
        if any(task.done() for task in self._workers):
            # The loop is ending (asyncio.run cancelled every task, the workers too): the jobs
            # they held are queued again, for fresh workers to deliver below.
            self._jobs.requeue(JobState.ATTEMPTING)
            self._hire(loop)
        # Report first: a SIGKILL during the drain must find every id already in the log.
        waiting = [job.event_id for job in self._jobs]
        began, sent, failed = time.monotonic(), self.stats.sent, self.stats.failed
        head = f"shutting down: draining {len(waiting)} events not yet delivered (up to"
        tail = "; any left after it are reported by id at ERROR"
        log_ids(logging.WARNING, f"{head} {self.shutdown_timeout:g}s{tail})", waiting)
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
            self._pause.clear()
        await report_undelivered(undelivered, reason, self.stats, self.on_drop)
        if waiting and not undelivered:  # the last line says how the drain ended
            took, failed = time.monotonic() - began, self.stats.failed - failed
            logger.info(
                "delivered %d events in %.1f s; nothing left%s",
                self.stats.sent - sent,
                took,
                f" ({failed} failed, reported above by id)" if failed else "",
            )
        await self.inner.aclose()
