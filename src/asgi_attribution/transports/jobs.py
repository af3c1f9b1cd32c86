"""The background queue's bookkeeping: one registry of jobs, each in one state at a time.

Example:
    >>> from asgi_attribution import DUB, LeadEvent
    >>> from asgi_attribution.transports.base import Delivery
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
import time
from collections import OrderedDict
from collections.abc import Iterator

from .base import Delivery

__all__ = ["ATTEMPTING", "QUEUED", "WAITING", "Job", "JobQueue", "JobState", "Registry"]


class JobState(enum.Enum):
    """Where an unfinished job is: waiting for a worker, being attempted, or backing off."""

    QUEUED = "queued"  # waiting for a worker
    ATTEMPTING = "attempting"  # a worker is making an attempt
    WAITING = "waiting"  # waiting out a backoff; its timer puts it back in QUEUED

    # Members are singletons: hashed by identity in C, not by name in Python (Enum's
    # __hash__), as the registry looks its states up several times per event.
    __hash__ = object.__hash__


# The members as module names: ``JobState.QUEUED`` goes through EnumType's attribute lookup,
# about 100 ns a time on Python 3.11, and the queue names a state six times per event.
QUEUED, ATTEMPTING, WAITING = JobState.QUEUED, JobState.ATTEMPTING, JobState.WAITING


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
        if state is not WAITING and job.timer is not None:
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
        self.put(job, QUEUED)
        if self._size == 1:  # it was empty, the only time ``idle`` is set
            self.idle.clear()
        if wake:
            self.ready.set()

    def take(self, job: Job) -> None:
        """A worker takes ``job`` for an attempt."""
        self.put(job, ATTEMPTING)
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
            while self.count(QUEUED) >= size:
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
